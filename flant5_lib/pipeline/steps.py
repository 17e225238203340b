"""What each step of the release pipeline does, as plain functions of (params YAML text, work folder).

The kfp components in `graph` call these (inside the project's training image, or in this Python under kfp.local);
each writes its record under `<work_dir>/` (step.json files, the eval folders, gate.json) and returns small strings,
so a step's outcome can be read after the pipeline ends, whichever engine ran it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from flant5_lib.config import Params, build_params
from flant5_lib.errors import UserError
from flant5_lib.fileio import write_json

log = logging.getLogger(__name__)
SPLIT = "test"  # candidate and incumbent are scored on the same test examples
CANDIDATE, INCUMBENT = "candidate", "incumbent"


def params_of(params_yaml: str) -> Params:
    return build_params(yaml.safe_load(params_yaml) or {}, source="pipeline params")


def _record(work_dir: str, step: str, obj: dict[str, Any]) -> dict[str, Any]:
    write_json(Path(work_dir) / f"{step}.json", obj)
    return obj


def preflight(params_yaml: str, work_dir: str) -> str:
    """Params, the test split and the incumbent (when the gate needs one): every problem before training starts.
    Returns the incumbent's resource name@version, or '' when the model has no default version yet."""
    from flant5_lib.evaluate import load_eval_records
    from flant5_lib.pipeline import registry

    params = params_of(params_yaml)
    n = len(load_eval_records(params, SPLIT))
    inc = registry.incumbent(params)
    if inc is None and params.gate_against == "incumbent":
        raise UserError("gate_against: 'incumbent' is set but no version of model "
                        f"{params.model_display_name!r} is aliased 'default'; register one first or use incumbent_if_any")
    name = f"{inc.resource_name}@{inc.version_id}" if inc is not None else ""
    _record(work_dir, "preflight", {"test_examples": n, "incumbent": name or None,
                                    "incumbent_artifact_uri": inc.uri if inc is not None else None})
    return name


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


def evaluate(params_yaml: str, work_dir: str, model: str, name: str) -> str:
    """Score `model` on the test split into <work_dir>/eval/<name>/; '' in, '' out (no incumbent)."""
    if not model:
        return ""
    from flant5_lib.evaluate import evaluate_model

    params = params_of(params_yaml).with_overrides(run_dir=str(Path(work_dir) / name))
    out = Path(work_dir) / "eval" / name
    evaluate_model(params, model, split=SPLIT, out_dir=out, name=name)
    return str(out)


def evaluate_incumbent(params_yaml: str, work_dir: str, incumbent: str) -> str:
    """Score the incumbent version (its artifact folder) on the same test examples; '' when there is none."""
    if not incumbent:
        return ""
    from flant5_lib.vertex.jobs import init_sdk

    params = params_of(params_yaml)
    name, _, vid = incumbent.partition("@")
    uri = init_sdk(params).Model(name, version=vid or None).uri
    return evaluate(params_yaml, work_dir, uri, INCUMBENT)


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


def promote(params_yaml: str, work_dir: str, version_name: str, deploy: bool) -> str:
    """Deploy the new version (when `deploy`) and move `default` to it. Returns the version's aliases, joined."""
    from flant5_lib.pipeline import registry

    params = params_of(params_yaml)
    model_name, _, vid = version_name.partition("@")
    model = registry.promote(params, model_name, vid)
    endpoint = None
    if deploy:
        from flant5_lib.vertex import jobs

        endpoint = jobs.deploy_model(params, model).resource_name
    _record(work_dir, "promote", {"model": version_name, "aliases": list(model.version_aliases), "endpoint": endpoint})
    return ",".join(model.version_aliases)


def stopped(params_yaml: str, work_dir: str) -> str:
    """The gate said stop: the reasons, one line each (also in gate.json). Nothing is uploaded."""
    decision = json.loads((Path(work_dir) / "gate.json").read_text(encoding="utf-8"))
    text = "; ".join(decision["reasons"]) or "stopped"
    _record(work_dir, "stopped", {"reasons": decision["reasons"]})
    return text
