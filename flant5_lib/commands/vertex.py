"""`flant5 vertex ...`: preflight, build, train, upload, deploy, predict, batch, artifacts, cleanup, estimate, tune,
tune-result, presets, local-stack.

Every command reads the typed Params (--params FILE, --set k=v, and --local-stack STATE.json from
`flant5 vertex local-stack`). `--dry-run` prints the exact request as JSON and sends nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from flant5_lib.config import Params, load_params, parse_set
from flant5_lib.errors import CloudError, ParamsError


def _common(p: argparse.ArgumentParser, dry_run: bool = True) -> None:
    p.add_argument("--params", help="YAML params file (e.g. params/vertex-a100.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (repeatable)")
    p.add_argument("--local-stack", metavar="STATE", help="state file of `flant5 vertex local-stack` (offline stand-ins)")
    if dry_run:
        p.add_argument("--dry-run", action="store_true",
                       help="run the preflight checks, print the request as JSON and send nothing")


# name -> (one-line description, example). Every parser shows both in --help.
_ACTIONS: dict[str, tuple[str, str]] = {
    "preflight": ("check images, requirements, machines, GPUs per region, TensorBoard and placeholders before paying "
                  "(exit 2 with one line per problem)",
                  "flant5 vertex preflight --params params/vertex-a100.yaml --set gcp_project=my-proj "
                  "--set staging_bucket=gs://my-bucket/flant5"),
    "build": ("build and push the training and serving images with Cloud Build (cloudbuild.yaml)",
              "flant5 vertex build --params params/vertex-a100.yaml --set gcp_project=my-proj --dry-run"),
    "train": ("launch the training job (runs preflight and prints the cost estimate first)",
              "flant5 vertex train --params params/vertex-a100.yaml --dry-run"),
    "upload": ("register a gs:// model folder with the serving container that matches the deploy hardware",
               "flant5 vertex upload --params params/vertex-a100.yaml --artifact-uri gs://my-bucket/flant5/model"),
    "deploy": ("create the endpoint if needed and deploy the newest model to it",
               "flant5 vertex deploy --params params/vertex-a100.yaml --dry-run"),
    "predict": ("summarise dialogues with the deployed endpoint; prints the curl equivalent",
                "flant5 vertex predict --params params/vertex-a100.yaml --dialogue 'Amy: Lunch?\\nBen: Sure.'"),
    "batch": ("batch prediction over a gs:// JSONL file of dialogues",
              "flant5 vertex batch --params params/vertex-a100.yaml --input gs://my-bucket/in.jsonl "
              "--output gs://my-bucket/out"),
    "artifacts": ("download a trained model from gs:// to the serving folder, or upload one",
                  "flant5 vertex artifacts download --params params/vertex-a100.yaml --local serving/model"),
    "cleanup": ("undeploy, delete the endpoint and the model (safe to repeat)",
                "flant5 vertex cleanup --params params/vertex-a100.yaml"),
    "estimate": ("expected cost and duration of the training job (params/prices.yaml)",
                 "flant5 vertex estimate --params params/vertex-a100.yaml"),
    "presets": ("list the training machine presets (train_preset)", "flant5 vertex presets"),
    "tune": ("hyperparameter tuning over the sweep's space file: one trial per training job, ranked on validation "
             "(preflight and the cost of max_trials trials first)",
             "flant5 vertex tune --params params/vertex-a100.yaml --space params/sweeps/tiny.yaml --dry-run"),
    "tune-result": ("the best trial and a table of every trial of a tuning job (JSON on stdout, table on stderr)",
                    "flant5 vertex tune-result --params params/vertex-a100.yaml"),
    "local-stack": ("run the GCS emulator and the Vertex AI stand-in on 127.0.0.1 until Ctrl-C",
                    "flant5 vertex local-stack --state-file runs/localstack/state.json --region europe-west4"),
}


def _parser(vs: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    text, example = _ACTIONS[name]
    return vs.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                         epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "vertex", help="train, deploy and call the model on Vertex AI (or the offline stand-in)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, register, deploy and call the model on Vertex AI, or on the offline stand-in "
        "(`flant5 vertex local-stack`) with the same requests. Every action takes --dry-run (print the request, send "
        "nothing); `flant5 vertex ACTION --help` shows each one's options.",
        epilog="examples:\n  flant5 vertex estimate --params params/vertex-a100.yaml\n"
        "  flant5 vertex train --params params/vertex-a100.yaml --set gcp_project=MY-PROJECT "
        "--set staging_bucket=gs://MY-BUCKET --dry-run",
    )
    vs = v.add_subparsers(dest="vertex_command", metavar="ACTION", parser_class=type(v))
    vs.required = True

    p = _parser(vs, "preflight")
    _common(p, dry_run=False)
    p.add_argument("--space", help="also check a tuning space file (`flant5 vertex tune --space`)")
    p.set_defaults(func=_preflight)

    p = _parser(vs, "build")
    _common(p)
    p.add_argument("--config", default="cloudbuild.yaml", help="Cloud Build file (default: cloudbuild.yaml)")
    p.set_defaults(func=_build)

    p = _parser(vs, "train")
    _common(p)
    p.add_argument("--prices", help="price table (default params/prices.yaml)")
    p.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    p.set_defaults(func=_train)

    p = _parser(vs, "upload")
    _common(p)
    p.add_argument("--artifact-uri", help="gs:// model folder (default: model_artifact_uri / the training output)")
    p.set_defaults(func=_upload)

    p = _parser(vs, "deploy")
    _common(p)
    p.add_argument("--model", help="model resource name (default: newest model named model_display_name)")
    p.set_defaults(func=_deploy)

    p = _parser(vs, "predict")
    _common(p)
    p.add_argument("--endpoint", help="endpoint resource name (default: the one named endpoint_display_name)")
    p.add_argument("--dialogue", action="append", default=[], help="a dialogue (repeatable; use \\n between turns)")
    p.add_argument("--file", help="JSONL/CSV/JSON file with a 'dialogue' column")
    p.set_defaults(func=_predict)

    p = _parser(vs, "batch")
    _common(p)
    p.add_argument("--input", required=True, help="gs://.../dialogues.jsonl ({\"dialogue\": ...} per line)")
    p.add_argument("--output", required=True, help="gs:// folder for the results")
    p.add_argument("--model", help="model resource name (default: newest model named model_display_name)")
    p.set_defaults(func=_batch)

    p = _parser(vs, "artifacts")
    _common(p)
    p.add_argument("direction", choices=["download", "upload"],
                   help="download: the trained model from gs:// to a local folder; upload: a local model folder to gs://")
    p.add_argument("--uri", help="gs:// model folder (default: model_artifact_uri / the training output)")
    p.add_argument("--local", help="local folder (default: artifacts_local_dir = serving/model)")
    p.set_defaults(func=_artifacts)

    p = _parser(vs, "cleanup")
    _common(p)
    p.set_defaults(func=_cleanup)

    p = _parser(vs, "estimate")
    _common(p, dry_run=False)
    p.add_argument("--prices", help="price table (default params/prices.yaml)")
    p.add_argument("--samples", type=int, help="training dialogues (default: counted or looked up)")
    p.add_argument("--preemptions-per-hour", type=float, metavar="RATE",
                   help="Spot preemptions per running hour assumed (default: params/tables/spot-prices.yaml)")
    p.set_defaults(func=_estimate)

    p = _parser(vs, "tune")
    _common(p)
    p.add_argument("--space", required=True, help="search space file, as for `flant5 sweep` (params/sweeps/*.yaml)")
    p.add_argument("--prices", help="price table (default params/prices.yaml)")
    p.add_argument("--no-wait", action="store_true", help="return once the job is created")
    p.set_defaults(func=_tune)

    p = _parser(vs, "tune-result")
    _common(p, dry_run=False)
    p.add_argument("--job", help="tuning job resource name or id (default: the newest named train_display_name)")
    p.set_defaults(func=_tune_result)

    p = _parser(vs, "presets")
    p.set_defaults(func=_presets)

    p = _parser(vs, "local-stack")
    p.add_argument("--workdir", default="runs/localstack", help="folder for emulated buckets, job folders and logs")
    p.add_argument("--port", type=int, help="Vertex stand-in port (default: a free one)")
    p.add_argument("--gcs-port", type=int, help="GCS emulator port (default: a free one)")
    p.add_argument("--project", default="local-project", help="project id the stand-in serves (in resource names)")
    p.add_argument("--region", default="us-central1", help="region the stand-in serves (others are refused)")
    p.add_argument("--bucket", default="gs://flant5-local", help="staging bucket created in the GCS emulator")
    p.add_argument("--state-file", help="also write the settings to this JSON file (removed on exit)")
    p.add_argument("--preempt-after", type=float, metavar="S", help="preempt each Spot job's replica S seconds after "
                   "it starts (SIGTERM, grace period, SIGKILL), then restart it as Vertex does (docs/spot-training.md)")
    p.add_argument("--preempt-times", type=int, default=1, metavar="N", help="preemptions per Spot job (default 1)")
    p.add_argument("--preempt-grace", type=float, default=30.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL (default 30, Compute Engine's notice)")
    p.set_defaults(func=_local_stack)


# --- helpers ---------------------------------------------------------------------------------------------


def _params(args: argparse.Namespace) -> Params:
    overrides: dict[str, Any] = {}
    if getattr(args, "local_stack", None):
        from flant5_lib.vertex.localstack import attach

        overrides.update(attach(args.local_stack) or {})
    overrides.update(parse_set(args.set))
    return load_params(args.params, overrides)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _call(action: str, fn: Any, *a: Any, **kw: Any) -> Any:
    """Run an SDK call; API errors become one CloudError line naming what to check."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    from flant5_lib.vertex.specs import explain_api_error

    try:
        return fn(*a, **kw)
    except (gexc.GoogleAPIError, auth_exc.GoogleAuthError, RuntimeError) as err:
        raise explain_api_error(err, action) from None


def _dry_run(params: Params, request: Any, roles: tuple[str, ...] = ()) -> int:
    """Print `request` as JSON after the checks a real run makes: the request's own fields (one line), then the whole
    rule set, whose real problems stop it (exit 2). Settings still to fill in (a dry run may show `<gcp_project>`)
    are listed on stderr."""
    from flant5_lib.vertex import rules

    rules.check_request(params, roles=roles, dry_run=True)
    blocking = rules.problems(params, settings=False)
    if blocking:
        raise ParamsError(f"preflight found {len(blocking)} problem(s):\n" + "\n".join(f"  {p}" for p in blocking))
    unset = rules.settings_to_fill(params)
    for line in unset:
        print(f"preflight: still to set before a real run: {line}", file=sys.stderr)
    if not unset:
        print("preflight: ok", file=sys.stderr)
    _print_json(request() if callable(request) else request)
    return 0


# --- commands ------------------------------------------------------------------------------------------------


def _preflight(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import images, rules

    params = _params(args)
    if args.space:
        from flant5_lib.search_space import load_space
        from flant5_lib.vertex import tune

        tune.require(params, load_space(args.space), args.space)
    else:
        rules.require(params)
    print(f"preflight: ok ({params.vertex_mode} mode; training image {images.train_image(params)}, "
          f"serving image {images.serving_image(params)})")
    return 0


def _build(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from flant5_lib.vertex import build

    params = _params(args)
    cmd = build.submit_command(params, args.config)
    if args.dry_run:
        return _dry_run(params, {"command": cmd, "images": build.image_uris(params)})
    build.check(params, args.config)
    if shutil.which(cmd[0]) is None:
        raise CloudError("gcloud: not found; install the Google Cloud CLI (https://cloud.google.com/sdk) or run the "
                         "command `flant5 vertex build --dry-run` prints where gcloud is installed")
    return subprocess.run(cmd, check=False).returncode


def _train(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import estimate, jobs, rules, specs

    params = _params(args)
    if not args.dry_run:  # (a dry run makes the same checks in `_dry_run`)
        rules.check_request(params, roles=("train",))
        rules.require(params)  # before the estimate: a job that cannot run has no price
    try:
        est: dict[str, Any] | str = estimate.estimate(params, estimate.load_prices(args.prices))
    except CloudError as err:
        est = f"no estimate: {err}"
    if args.dry_run:
        return _dry_run(params, lambda: {**specs.training_request(params), "estimate": est}, ("train",))
    print(estimate.format_estimate(est) if isinstance(est, dict) else est, file=sys.stderr)
    job, model = _call("vertex train", jobs.run_training, params, wait=not args.no_wait)
    out = {"training_pipeline": job.resource_name, "state": job.state.name,
           "output_dir": specs.train_output_dir(params), "model": getattr(model, "resource_name", None)}
    _print_json(out)
    return 0


def _upload(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import jobs, specs

    params = _params(args)
    if args.dry_run:
        return _dry_run(params, lambda: specs.upload_request(params, args.artifact_uri))
    model = _call("vertex upload", jobs.upload_model, params, args.artifact_uri)
    _print_json({"model": model.resource_name, "artifact_uri": model.uri})
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import jobs, rules, specs

    params = _params(args)
    if args.dry_run:
        model = args.model or f"<newest model named {params.model_display_name}>"
        return _dry_run(params, lambda: specs.deploy_request(params, model=model), ("deploy",))
    rules.check_request(params, roles=("deploy",))  # before the model lookup, itself a call
    model = _call("vertex deploy", jobs.latest_model, params, args.model)
    endpoint = _call("vertex deploy", jobs.deploy_model, params, model)
    _print_json({"endpoint": endpoint.resource_name, "model": model.resource_name,
                 "traffic_split": dict(endpoint.traffic_split)})
    return 0


def _dialogues(args: argparse.Namespace) -> list[str]:
    texts = [d.replace("\\n", "\n") for d in args.dialogue]
    if args.file:
        from flant5_lib.data import read_dialogues_file

        texts += [r["dialogue"] for r in read_dialogues_file(args.file)]
    if not texts:
        raise CloudError("predict: no dialogues; pass --dialogue 'A: hi\\nB: hello' or --file dialogues.jsonl")
    return texts


def _predict(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import jobs, rules, specs

    params = _params(args)
    dialogues = _dialogues(args)
    instances = [{"dialogue": d} for d in dialogues]
    if args.dry_run:
        req = specs.predict_request(params, instances, args.endpoint or "<endpoint id>")
        return _dry_run(params, {**req, "curl": specs.curl_command(req)})
    rules.check_request(params, need=rules.API_SETTINGS)
    endpoint = _call("vertex predict", jobs.get_endpoint, params, args.endpoint)
    preds = _call("vertex predict", jobs.predict, params, endpoint, dialogues)
    req = specs.predict_request(params, instances, endpoint.resource_name)
    _print_json({"endpoint": endpoint.resource_name, "predictions": preds})
    print(f"# the same request with curl:\n{specs.curl_command(req)}", file=sys.stderr)
    return 0


def _batch(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import jobs, specs

    params = _params(args)
    if args.dry_run:
        return _dry_run(params, lambda: specs.batch_request(params, args.input, args.output,
                                                            args.model or "<newest model>"), ("batch",))
    model = _call("vertex batch", jobs.latest_model, params, args.model)
    job = _call("vertex batch", jobs.batch_predict, params, model, args.input, args.output)
    _print_json({"batch_prediction_job": job.resource_name, "state": job.state.name,
                 "output_dir": job.output_info.gcs_output_directory})
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import jobs, specs

    params = _params(args)
    uri = args.uri or specs.model_artifact_uri(params)
    local = args.local or params.artifacts_local_dir
    if args.dry_run:
        src, dst = (uri, local) if args.direction == "download" else (local, uri)
        return _dry_run(params, {"action": f"artifacts {args.direction}", "from": src, "to": dst})
    if args.direction == "download":
        path = jobs.download_artifacts(params, args.uri, args.local)
        _print_json({"downloaded": uri, "to": str(path)})
    else:
        dest = jobs.upload_artifacts(params, args.local, args.uri)
        _print_json({"uploaded": local, "to": dest})
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import jobs, specs

    params = _params(args)
    if args.dry_run:
        base = f"{specs.api_base(params)}/v1/{specs.parent(params)}"
        return _dry_run(params, {"steps": [
            {"method": "GET", "url": f"{base}/endpoints", "query": {"filter": f'display_name="{params.endpoint_display_name}"'}},
            {"method": "POST", "url": f"{base}/endpoints/<each>:undeployModel", "body": {"deployedModelId": "<each>"}},
            {"method": "DELETE", "url": f"{base}/endpoints/<each>"},
            {"method": "GET", "url": f"{base}/models", "query": {"filter": f'display_name="{params.model_display_name}"'}},
            {"method": "DELETE", "url": f"{base}/models/<each>"},
        ]})
    _print_json(_call("vertex cleanup", jobs.cleanup, params))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import estimate, rules

    params = _params(args)
    rules.check_request(params, roles=("train",), dry_run=True)
    est = estimate.estimate(params, estimate.load_prices(args.prices), args.samples, args.preemptions_per_hour)
    print(estimate.format_estimate(est), file=sys.stderr)
    _print_json(est)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from flant5_lib.search_space import load_space
    from flant5_lib.vertex import estimate, rules, tune

    params = _params(args)
    space = load_space(args.space)
    if args.dry_run:  # the study's own rules stop a dry run too; `_dry_run` adds the rest of the rule set
        found = rules.tuning_problems(params, space)
        if found:
            raise ParamsError(f"preflight found {len(found)} problem(s) ({args.space}):\n"
                              + "\n".join(f"  {p}" for p in found))
    else:
        rules.check_request(params, roles=("train",))
        tune.require(params, space, args.space)  # before the estimate: a job that cannot run has no price
    try:
        est: dict[str, Any] | str = tune.estimate(params, space, estimate.load_prices(args.prices))
    except CloudError as err:
        est = f"no estimate: {err}"
    if args.dry_run:
        return _dry_run(params, lambda: {**tune.tuning_request(params, space), "estimate": est}, ("train",))
    print(tune.format_estimate(est) if isinstance(est, dict) else est, file=sys.stderr)
    try:
        job = _call("vertex tune", tune.run_tuning, params, space, wait=not args.no_wait)
    except tune.TuningFailed as failed:
        print(tune.format_table(tune.summarize(failed.job)), file=sys.stderr)
        raise
    summary = tune.summarize(job)
    print(tune.format_table(summary), file=sys.stderr)
    _print_json(summary)
    return 0


def _tune_result(args: argparse.Namespace) -> int:
    from flant5_lib.vertex import rules, tune

    params = _params(args)
    rules.check_request(params, need=rules.API_SETTINGS)
    summary = tune.summarize(_call("vertex tune-result", tune.find_job, params, args.job))
    print(tune.format_table(summary), file=sys.stderr)
    _print_json(summary)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from flant5_lib.vertex.presets import PRESETS

    for name, p in PRESETS.items():
        gpus = f"{p.accelerator_count} x {p.accelerator_type}" if p.accelerator_count else "no GPU"
        print(f"{name:15s} {p.machine_type:16s} {gpus:24s} replicas={p.replica_count}  {p.note}")
    return 0


def _local_stack(args: argparse.Namespace) -> int:
    from flant5_lib.vertex.localstack import start_local_stack

    import signal

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the stand-ins as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, _interrupt)
    plan = None
    if args.preempt_after is not None:
        from flant5_lib.vertex.localstack.preempt import PreemptPlan

        if args.preempt_after < 0 or args.preempt_times < 1 or args.preempt_grace < 0:
            raise ParamsError("--preempt-after/--preempt-grace: must be >= 0, and --preempt-times >= 1")
        plan = PreemptPlan(args.preempt_after, args.preempt_times, args.preempt_grace)
    stack = start_local_stack(args.workdir, port=args.port, gcs_port=args.gcs_port, project=args.project,
                              region=args.region, bucket=args.bucket, preempt=plan)
    try:
        if args.state_file:
            stack.write_state(args.state_file)
        s = stack.settings()
        print(f"Vertex AI stand-in: {s['api_endpoint']}   GCS emulator: {s['gcs_endpoint']}   workdir: {s['workdir']}")
        print("environment:")
        for k, val in s["env"].items():
            print(f"  export {k}={val}")
        print("params overrides (or pass --local-stack STATE to flant5 vertex commands):")
        print("  " + " ".join(f"--set {k}={val}" for k, val in s["params"].items()))
        if args.state_file:
            print(f"state file: {args.state_file}")
        print("Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        if args.state_file and os.path.exists(args.state_file):
            os.remove(args.state_file)
    return 0
