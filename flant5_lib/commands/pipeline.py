"""`flant5 pipeline compile|run|status`: the evaluation-gated release pipeline (Kubeflow Pipelines v2).

kfp is imported inside the commands, so `flant5 --help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DESCRIPTION = """The release pipeline: preflight, training (locally or as `flant5 vertex train`), evaluation of the
candidate and of the incumbent (the version aliased 'default') on the same test examples, the paired comparison, a
gate (gate_min_rouge1, gate_min_rougeL, gate_tolerance), then a new version of the same model in the Model Registry
with its ROUGE evaluation, deployed as a canary (canary_traffic_percent), smoke-tested online and in batch, then given
all the traffic and aliased 'default'. A candidate the gate stops is not uploaded; gate.json says why. A failed step
leaves serving as it was (the exit handler restores it); every run ends with its page, release.md. See
docs/release-pipeline.md."""

EXAMPLES = """examples:
  flant5 pipeline compile --params params/vertex-a100.yaml --out runs/pipeline/release.yaml
  flant5 pipeline compile --params params/vertex-a100.yaml --dry-run      # the steps and their image
  flant5 pipeline run --local --params params/local-smoke.yaml --work-dir runs/release   # offline: kfp.local + stand-in
  flant5 pipeline run --params params/vertex-a100.yaml --work-dir /gcs/BUCKET/release    # Vertex AI Pipelines
  flant5 pipeline run --params params/local-smoke.yaml --local-stack STATE --wait        # PipelineJob to the stand-in
  flant5 pipeline status --work-dir runs/release
  flant5 pipeline rollback --params params/vertex-a100.yaml --model projects/P/locations/R/models/ID --version 1"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the evaluation-gated release pipeline: compile, run (offline too), status",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--params", metavar="FILE", help="params YAML (local path or gs:// URI)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter (repeatable)")
        q.add_argument("--local-stack", metavar="STATE", help="state file of `flant5 vertex local-stack` (offline stand-ins)")

    c = _action(actions, "compile", "write the pipeline spec YAML (what aiplatform.PipelineJob submits)",
                'flant5 pipeline compile --params params/vertex-a100.yaml --out runs/pipeline/release.yaml')
    common(c)
    c.add_argument("--out", metavar="FILE", default="runs/pipeline/release.yaml", help="spec file (default %(default)s)")
    c.add_argument("--dry-run", action="store_true", help="print the steps and their image; write nothing")
    c.set_defaults(func=_compile)

    r = _action(actions, "run", "run the pipeline: --local with kfp.local and the stand-in, else on Vertex AI Pipelines",
                'flant5 pipeline run --params params/local-smoke.yaml --local')
    common(r)
    r.add_argument("--local", action="store_true", help="run offline with kfp.local (starts a stand-in unless --local-stack)")
    r.add_argument("--work-dir", metavar="DIR", default="runs/release",
                   help="folder the steps write their records to (on Vertex: a /gcs/BUCKET/... path); default %(default)s")
    r.add_argument("--no-deploy", action="store_true", help="register and promote the new version, but do not deploy it")
    r.add_argument("--wait", action="store_true", help="on Vertex AI Pipelines: wait for the job's end, then print "
                   "each task's state (exit 0 only if it succeeded)")
    r.add_argument("--fresh", action="store_true", help="--local: clear an earlier run's records and candidate from --work-dir first")
    r.set_defaults(func=_run)

    v = _action(actions, "rollback", "list a model's versions, or move its 'default' alias back to one",
                'flant5 pipeline rollback --params params/vertex-a100.yaml --model projects/P/locations/L/models/ID --version 1')
    common(v)
    v.add_argument("--model", metavar="NAME", required=True, help="model resource name (projects/.../models/ID)")
    v.add_argument("--version", metavar="ID", help="version to make the default; without it, list the versions")
    v.set_defaults(func=_rollback)

    s = _action(actions, "status", "what a run's steps recorded: the gate's decision, the version registered",
                'flant5 pipeline status --work-dir runs/release')
    s.add_argument("--work-dir", metavar="DIR", default="runs/release", help="the run's --work-dir (default %(default)s)")
    s.set_defaults(func=_status)


def _params(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    from flant5_lib.config import load_params, parse_set

    overrides: dict[str, Any] = dict(extra or {})
    if args.local_stack:
        from flant5_lib.vertex.localstack import attach

        overrides.update(attach(args.local_stack) or {})
    overrides.update(parse_set(args.set))
    return load_params(args.params, overrides)


def _compile(args: argparse.Namespace) -> int:
    from flant5_lib.pipeline import graph

    params = _params(args)
    if args.dry_run:
        from flant5_lib.pipeline.plan import plan

        cost = plan(params, graph.STEPS, graph.image(params))
        for row in cost["steps"]:  # a table to read on stderr; the JSON on stdout is for scripts
            print(f"{row['step']:<20} {row['machine']:<34} {row['hours']:>6.2f} h  ${row['usd']:>7.2f}  {row['note']}",
                  file=sys.stderr)
        print(f"{'total':<20} {'':<34} {cost['total_hours']:>6.2f} h  ${cost['total_usd']:>7.2f}  prices read "
              f"{cost['prices_read_on']}: {cost['note']}", file=sys.stderr)
        print(json.dumps({"pipeline": params.pipeline_display_name, "image": graph.image(params),
                          "train_on": params.pipeline_train_on, "steps": list(graph.STEPS),
                          "canary_traffic_percent": params.canary_traffic_percent,
                          "batch_smoke_examples": params.batch_smoke_examples, "cost": cost}, indent=2))
        return 0
    print(graph.compile_spec(params, args.out))
    return 0


def _run(args: argparse.Namespace) -> int:
    from flant5_lib.pipeline import graph, registry, runner

    if not args.local:
        params = _params(args)
        runner.pipeline_root(params)  # a bad pipeline_root is one line before anything is compiled
        _api(registry.checked_incumbent, "look up the incumbent", params)
        with tempfile.TemporaryDirectory() as tmp:
            spec = graph.compile_spec(params, Path(tmp) / "release.yaml")
            job = _api(runner.submit, "submit the PipelineJob", params, spec, args.work_dir, deploy=not args.no_deploy)
        print(job.resource_name)
        return _wait(job, args.work_dir) if args.wait else 0
    if args.local_stack:
        params = _params(args)
        _api(registry.checked_incumbent, "look up the incumbent", params)
        summary = runner.run_local(params, args.work_dir, deploy=not args.no_deploy, fresh=args.fresh)
    else:
        from flant5_lib.vertex.localstack import start_local_stack

        _params(args)  # bad values and an earlier run's folder are one line before the stand-in starts
        runner.earlier_run(args.work_dir, args.fresh)
        with start_local_stack(Path(args.work_dir) / "stand-in") as stack:
            params = _params(args, stack.params_overrides())
            _api(registry.checked_incumbent, "look up the incumbent", params)
            summary = runner.run_local(params, args.work_dir, deploy=not args.no_deploy, fresh=args.fresh)
    _print_summary(summary)
    return 0 if summary["outcome"] in ("released", "stopped at the gate") else 1


def _wait(job: Any, work_dir: str) -> int:
    """Wait for a submitted PipelineJob; print its tasks' states and, where --work-dir is readable here, the
    records its steps wrote."""
    from flant5_lib.pipeline import runner

    try:
        _api(job.wait, "wait for the PipelineJob")
    except RuntimeError:  # the SDK's way of saying the job failed; its tasks below say where
        pass
    print(f"{job.resource_name}: {job.state.name}")
    for task in sorted(job.task_details, key=lambda t: int(t.task_id or 0)):
        print(f"  {task.task_name:<28} {task.state.name}")
    if Path(work_dir, "preflight.json").is_file():
        _print_summary(runner.status(work_dir))
    return 0 if job.state.name == "PIPELINE_STATE_SUCCEEDED" else 1


def _api(fn: Any, action: str, *a: Any, **kw: Any) -> Any:
    """An SDK call whose API errors become one line (as `flant5 vertex` does)."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    from flant5_lib.vertex.specs import explain_api_error

    try:
        return fn(*a, **kw)
    except (gexc.GoogleAPIError, auth_exc.GoogleAuthError) as err:
        raise explain_api_error(err, action) from None


def _rollback(args: argparse.Namespace) -> int:
    from flant5_lib.pipeline import registry

    params = _params(args)
    if args.version:
        model = _api(registry.promote, "move the default alias", params, args.model, args.version)
        print(f"{model.resource_name}@{model.version_id} aliases {','.join(model.version_aliases)}")
        return 0
    for row in _api(registry.versions, "list the versions", params, args.model):
        print(f"{row['version_id']:>4}  {','.join(row['aliases']) or '-':<20} {row['created']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from flant5_lib.pipeline import runner

    _print_summary(runner.status(args.work_dir))
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    steps = summary["steps"]
    print(f"{summary['work_dir']}: {summary['outcome']}")
    gate = steps.get("gate")
    if gate:
        for check in gate["checks"]:
            mark = "ok  " if check["passed"] else "FAIL"
            print(f"  {mark} {check['reason'] if not check['passed'] else check['check']}")
    if "promote" in steps:
        print(f"  {steps['promote']['model']} aliases {','.join(steps['promote']['aliases'])}"
              + (f", traffic {steps['promote']['traffic_split']}" if steps["promote"].get("traffic_split") else ""))
    if "failure" in steps:
        print(f"  step {steps['failure']['step']} failed: {steps['failure']['error']}")
    if "restored" in steps and steps["restored"].get("serving"):
        print(f"  serving restored: traffic {steps['restored']['serving'].get('traffic_split')}")
    page = Path(summary["work_dir"]) / "release.md"
    if page.is_file():
        print(f"  page: {page}")


def _action(actions: argparse._SubParsersAction, name: str, text: str, example: str) -> argparse.ArgumentParser:
    """One sub-command with its help line, the same sentence as its description, and one example."""
    return actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
