"""What each step of the release pipeline does, as plain functions of (params YAML text, work folder).

The kfp components in `graph` call these (inside the project's training image, or in this Python under kfp.local);
each writes its record under `<work_dir>/` (step.json files, the eval folders, gate.json) and returns small strings,
so a step's outcome can be read after the pipeline ends, whichever engine ran it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from flant5_lib.config import Params, build_params
from flant5_lib.fileio import write_json

log = logging.getLogger(__name__)
SPLIT = "test"  # candidate and incumbent are scored on the same test examples
CANDIDATE, INCUMBENT = "candidate", "incumbent"


def params_of(params_yaml: str) -> Params:
    return build_params(yaml.safe_load(params_yaml) or {}, source="pipeline params")


def _record(work_dir: str, step: str, obj: dict[str, Any]) -> dict[str, Any]:
    write_json(Path(work_dir) / f"{step}.json", obj)
    return obj


@contextmanager
def _failure_recorded(work_dir: str, step: str) -> Iterator[None]:
    """A step that fails leaves failure.json (the step, the error's one line) for the exit handler's page: the
    engine's own final status says only which group failed."""
    try:
        yield
    except Exception as err:
        _record(work_dir, "failure", {"step": step, "error": f"{type(err).__name__}: {err}".splitlines()[0]})
        raise


def _step(fn: Callable[..., str]) -> Callable[..., str]:
    """Every step's failure leaves failure.json (`_failure_recorded`), named after the step."""
    @functools.wraps(fn)
    def run(params_yaml: str, work_dir: str, *args: Any) -> str:
        with _failure_recorded(work_dir, fn.__name__.replace("_", "-")):
            return fn(params_yaml, work_dir, *args)
    return run


@_step
def preflight(params_yaml: str, work_dir: str) -> str:
    """Params, the test split and the incumbent (when the gate needs one): every problem before training starts.
    Returns the incumbent's resource name@version, or '' when the model has no default version yet."""
    from flant5_lib.evaluate import load_eval_records
    from flant5_lib.pipeline import registry

    params = params_of(params_yaml)
    n = len(load_eval_records(params, SPLIT))
    inc = registry.checked_incumbent(params)
    name = f"{inc.resource_name}@{inc.version_id}" if inc is not None else ""
    _record(work_dir, "preflight", {"test_examples": n, "incumbent": name or None,
                                    "incumbent_artifact_uri": inc.uri if inc is not None else None})
    return name


@_step
def train(params_yaml: str, work_dir: str) -> str:
    """Train the candidate; returns its model folder (gs:// when trained on Vertex, local otherwise)."""
    params = params_of(params_yaml)
    if params.pipeline_train_on == "vertex":
        from flant5_lib.vertex import jobs, specs

        job, _ = jobs.run_training(params)
        model = specs.model_artifact_uri(params)
        _record(work_dir, "train", {"on": "vertex", "job": job.resource_name, "model": model})
        return model
    from flant5_lib.train.loop import train as fit

    result = fit(params.with_overrides(run_dir=str(Path(work_dir) / CANDIDATE)))
    if result.interrupted:
        raise RuntimeError(f"training was interrupted at step {result.metrics.get('global_step')}; run again to resume")
    _record(work_dir, "train", {"on": "local", "model": str(result.model_dir)})
    return str(result.model_dir)


@_step
def evaluate(params_yaml: str, work_dir: str, model: str, name: str) -> str:
    """Score `model` on the test split into <work_dir>/eval/<name>/; '' in, '' out (no incumbent)."""
    if not model:
        return ""
    from flant5_lib.evaluate import evaluate_model

    params = params_of(params_yaml).with_overrides(run_dir=str(Path(work_dir) / name))
    out = Path(work_dir) / "eval" / name
    evaluate_model(params, model, split=SPLIT, out_dir=out, name=name)
    return str(out)


@_step
def evaluate_incumbent(params_yaml: str, work_dir: str, incumbent: str) -> str:
    """Score the incumbent version (its artifact folder) on the same test examples; '' when there is none."""
    if not incumbent:
        return ""
    from flant5_lib.vertex.jobs import init_sdk

    params = params_of(params_yaml)
    name, _, vid = incumbent.partition("@")
    uri = init_sdk(params).Model(name, version=vid or None).uri
    return evaluate(params_yaml, work_dir, uri, INCUMBENT)


@_step
def gate(params_yaml: str, work_dir: str, candidate_eval: str, incumbent_eval: str) -> str:
    """Judge the candidate; writes gate.json (and compare.json with an incumbent). Returns 'pass' or 'stop'."""
    from flant5_lib import compare
    from flant5_lib.pipeline.gate import decide

    params = params_of(params_yaml)
    metrics = json.loads((Path(candidate_eval) / "metrics.json").read_text(encoding="utf-8"))
    pair = None
    if incumbent_eval:
        systems = compare.load_systems([incumbent_eval, candidate_eval])
        result = compare.compare_systems(systems, samples=params.bootstrap_samples, seed=params.seed)
        compare.write_compare_json(result, work_dir)
        pair = result["pairs"][0]
    decision = decide(params, metrics, pair)
    _record(work_dir, "gate", decision)
    for reason in decision["reasons"]:
        log.warning("gate: %s", reason)
    return "pass" if decision["passed"] else "stop"


@_step
def register(params_yaml: str, work_dir: str, model: str, incumbent: str) -> str:
    """Upload the candidate as the next version of the incumbent's model (alias `candidate`), or as version 1 of a
    new model (then `default` at once: nothing serves yet). Returns resource_name@version."""
    from flant5_lib import storage
    from flant5_lib.pipeline import registry
    from flant5_lib.vertex import specs

    params = params_of(params_yaml)
    uri = model
    if not storage.is_gcs(model):
        uri = storage.upload_dir(model, f"{specs.staging_root(params)}/pipeline/{Path(work_dir).name}/model")
    parent = incumbent.split("@")[0] or None
    version = registry.register_version(params, uri, parent, default=parent is None)
    name = f"{version.resource_name}@{version.version_id}"
    _record(work_dir, "register", {"model": name, "artifact_uri": uri, "aliases": list(version.version_aliases)})
    return name


@_step
def import_evaluation(params_yaml: str, work_dir: str, version_name: str, candidate_eval: str) -> str:
    """Attach the candidate's test ROUGE to its new version (Model Registry > version > Evaluate). Returns the
    evaluation's resource name."""
    from flant5_lib.pipeline import registry

    params = params_of(params_yaml)
    metrics = json.loads((Path(candidate_eval) / "metrics.json").read_text(encoding="utf-8"))
    ev = registry.import_evaluation(params, version_name, metrics, f"rouge-{SPLIT}")
    _record(work_dir, "evaluation", {"model": version_name, "evaluation": ev.resource_name,
                                     "metrics_schema_uri": registry.SUMMARIZATION_SCHEMA,
                                     "metrics": dict(ev.metrics)})
    return ev.resource_name


def _version(params: Params, version_name: str) -> Any:
    from flant5_lib.vertex.jobs import init_sdk

    name, _, vid = version_name.partition("@")
    return init_sdk(params).Model(name, version=vid or None)


def canary(params_yaml: str, work_dir: str, version_name: str, deploy: bool) -> str:
    """Record serving as it is (serving-before.json, what the exit handler restores on failure), then deploy the new
    version with `canary_traffic_percent` of the traffic. Returns canary.json's text ('' without `deploy`)."""
    if not deploy:
        return ""
    from flant5_lib.pipeline import serving

    params = params_of(params_yaml)
    _record(work_dir, "serving-before", serving.snapshot(params))
    before = json.loads((Path(work_dir) / "serving-before.json").read_text(encoding="utf-8"))
    with _failure_recorded(work_dir, "canary"):
        out = serving.deploy_canary(params, _version(params, version_name), before)
    return json.dumps(_record(work_dir, "canary", {"model": version_name, **out}))


def smoke(params_yaml: str, work_dir: str, version_name: str, canary: str) -> str:
    """Online predictions answered by the canary itself, then a small BatchPredictionJob of the new version, each
    summary checked (`smoke_min_summary_chars`). A failure here fails the run; the exit handler restores serving."""
    if not canary:
        return ""
    from flant5_lib.evaluate import load_eval_records
    from flant5_lib.pipeline import serving
    from flant5_lib.vertex import specs

    params = params_of(params_yaml)
    dialogues = [r["dialogue"] for r in load_eval_records(params, SPLIT)]
    placed = json.loads(canary)
    with _failure_recorded(work_dir, "smoke"):
        record: dict[str, Any] = {"online": serving.smoke_online(
            params, placed["endpoint"], placed["deployed_model_id"], dialogues[:max(params.smoke_predictions, 1)])}
        if params.batch_smoke_examples:
            prefix = f"{specs.staging_root(params)}/pipeline/{Path(work_dir).name}/batch-smoke"
            record["batch"] = serving.smoke_batch(params, _version(params, version_name),
                                                  dialogues[:params.batch_smoke_examples], prefix)
    _record(work_dir, "smoke", record)
    return "ok"


def promote(params_yaml: str, work_dir: str, version_name: str, canary: str) -> str:
    """The canary passed its smoke tests: all the traffic to it, `default` moved to its version, the previous
    deployed models undeployed (their versions stay listed). Without a deployment only the alias moves. Returns the
    version's aliases, joined."""
    from flant5_lib.pipeline import registry, serving

    params = params_of(params_yaml)
    model_name, _, vid = version_name.partition("@")
    split, endpoint, retired = None, None, []
    with _failure_recorded(work_dir, "promote"):
        if canary:
            placed = json.loads(canary)
            endpoint = placed["endpoint"]
            split = serving.full_traffic(params, endpoint, placed["deployed_model_id"])
        model = registry.promote(params, model_name, vid)
        if canary:
            retired = serving.retire(params, endpoint, placed["deployed_model_id"])
    _record(work_dir, "promote", {"model": version_name, "aliases": list(model.version_aliases), "endpoint": endpoint,
                                  "traffic_split": split, "undeployed": retired})
    return ",".join(model.version_aliases)


def finish(params_yaml: str, work_dir: str, state: str) -> str:
    """The exit handler: on a run that neither released nor stopped at the gate, serving goes back to what
    serving-before.json recorded (and `default` back to the incumbent); then the run's page, release.md. Returns
    the page's path."""
    from flant5_lib.pipeline import page, records

    params = params_of(params_yaml)
    work = Path(work_dir)
    summary = records.status(work) if any(work.glob("*.json")) else {"outcome": "failed", "steps": {}}
    problem = None
    if summary["outcome"] not in ("released", "stopped at the gate"):
        try:
            _record(work_dir, "restored", _restore(params, work))
        except Exception as err:  # the page still says so; then the exit handler fails loudly
            problem = err
            _record(work_dir, "restored", {"error": f"{type(err).__name__}: {err}".splitlines()[0]})
    written = page.write_page(work, state, records.status(work) if any(work.glob("*.json")) else summary)
    if problem is not None:
        raise problem
    return str(written)


def _restore(params: Params, work: Path) -> dict[str, Any]:
    """Serving and the `default` alias as they were before this run (what it found in preflight.json)."""
    from flant5_lib.pipeline import registry, serving

    out: dict[str, Any] = {}
    before = work / "serving-before.json"
    if before.is_file():
        out["serving"] = serving.restore(params, json.loads(before.read_text(encoding="utf-8")))
    pre = work / "preflight.json"
    incumbent = json.loads(pre.read_text(encoding="utf-8")).get("incumbent") if pre.is_file() else None
    if incumbent:
        name, _, vid = incumbent.partition("@")
        out["default"] = f"{name}@{vid}"
        registry.promote(params, name, vid)  # a no-op unless promote had moved it already
    reg = work / "register.json"
    if reg.is_file():  # the failed version stays listed, without the alias a next run's candidate needs
        name = json.loads(reg.read_text(encoding="utf-8"))["model"].partition("@")[0]
        out["candidate_alias_dropped_from"] = registry.drop_alias(params, name, "candidate")
    return out


def stopped(params_yaml: str, work_dir: str) -> str:
    """The gate said stop: the reasons, one line each (also in gate.json). Nothing is uploaded."""
    decision = json.loads((Path(work_dir) / "gate.json").read_text(encoding="utf-8"))
    text = "; ".join(decision["reasons"]) or "stopped"
    _record(work_dir, "stopped", {"reasons": decision["reasons"]})
    return text
