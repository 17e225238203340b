"""Hyperparameter tuning jobs in the stand-in: Vertex's request validation, trials as custom jobs, their metric files.

A job is refused as Vertex refuses it (400 INVALID_ARGUMENT, before anything runs), else each trial runs as a
CustomJob of the job's `trialJobSpec` (the backend's own runner) with the trial's values appended to every pool's
args as `--name=value`, `AIP_MODEL_DIR` under `<baseOutputDirectory>/<trial id>/`, and its own metric file named by
`CLOUD_ML_HP_METRIC_FILE`. Suggestions: grid search walks the grid in parameter order, random search draws with the
job's own seeded generator, and Vertex's default (Bayesian) search is run as random search here. Trials run up to
`parallelTrialCount` at once, bounded by this machine's cores. A trial's measurements are read from the lines it
wrote (cloudml-hypertune's format); one that reports nothing, or crashes, ends INFEASIBLE with the reason (a crash
names its log), and the others go on.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from flant5_lib.vertex.localstack import checks
from flant5_lib.vertex.localstack.backend import Backend, now
from flant5_lib.vertex.localstack.errors import ApiError

log = logging.getLogger(__name__)

_TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
_VALUE_SPECS = ("doubleValueSpec", "integerValueSpec", "discreteValueSpec", "categoricalValueSpec")
_POLL_S = 0.1  # how often a trial's custom job is looked at (a lock and a dict read)


def _enum(value: Any, enum: Any, where: str) -> str:
    """An enum's name: the SDK's REST transport sends numbers (`enum-encoding=int`), other clients names."""
    if value in (None, ""):
        return list(enum)[0].name
    try:
        return enum(int(value)).name if isinstance(value, int) or str(value).isdigit() else enum[str(value)].name
    except (KeyError, ValueError):
        raise ApiError(400, f"Invalid value at '{where}' ({enum.__name__}): {value}.") from None


# --- the study ---------------------------------------------------------------------------------------------------


def _parameter(spec: dict[str, Any], i: int, algorithm: str) -> dict[str, Any]:
    """One parameter, checked as Vertex checks it: {id, kind, min/max or values, scale}."""
    from google.cloud.aiplatform_v1.types import StudySpec

    where = f"study_spec.parameters[{i}]"
    pid = spec.get("parameterId")
    if not pid:
        raise ApiError(400, f"{where}.parameter_id is required.")
    kinds = [k for k in _VALUE_SPECS if k in spec]
    if len(kinds) != 1:
        raise ApiError(400, f"{where} ({pid}): exactly one of double_value_spec, integer_value_spec, "
                            "discrete_value_spec or categorical_value_spec is required.")
    if spec.get("conditionalParameterSpecs"):
        raise ApiError(400, f"{where} ({pid}): conditional parameter specs are not emulated by the local stand-in.",
                       "FAILED_PRECONDITION")
    kind = kinds[0].removesuffix("ValueSpec")
    value_spec = spec[kinds[0]] or {}
    scale = _enum(spec.get("scaleType"), StudySpec.ParameterSpec.ScaleType, f"{where}.scale_type")
    out: dict[str, Any] = {"id": pid, "kind": kind, "scale": scale}
    if kind in ("double", "integer"):
        cast = float if kind == "double" else int
        try:  # proto3 JSON leaves out a 0: an absent bound is 0
            lo, hi = cast(value_spec.get("minValue", 0)), cast(value_spec.get("maxValue", 0))
        except (TypeError, ValueError):
            raise ApiError(400, f"{where} ({pid}): {kind}_value_spec needs numeric min_value and max_value.") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ApiError(400, f"{where} ({pid}): min_value ({lo:g}) must be less than max_value ({hi:g}).")
        if kind == "double" and algorithm == "GRID_SEARCH":
            raise ApiError(400, f"{where} ({pid}): grid search does not support DOUBLE parameters; use "
                                "discrete_value_spec.")
        out.update(min=lo, max=hi)
        low = lo
    else:
        values = list(value_spec.get("values") or [])
        if not values:
            raise ApiError(400, f"{where} ({pid}): {kind}_value_spec.values must not be empty.")
        if len({repr(v) for v in values}) != len(values):
            raise ApiError(400, f"{where} ({pid}): {kind}_value_spec.values must be distinct.")
        if kind == "discrete":
            values = sorted(float(v) for v in values)
        out["values"] = values
        low = values[0] if kind == "discrete" else 1.0
    if scale in ("UNIT_LOG_SCALE", "UNIT_REVERSE_LOG_SCALE") and low <= 0:
        raise ApiError(400, f"{where} ({pid}): {scale} needs every value above 0 (min {low:g}).")
    return out


def _study(body: dict[str, Any]) -> dict[str, Any]:
    from google.cloud.aiplatform_v1.types import StudySpec

    spec = body.get("studySpec") or {}
    metrics = spec.get("metrics") or []
    if not metrics:
        raise ApiError(400, "HyperparameterTuningJob.study_spec.metrics is required.")
    goals = []
    for i, m in enumerate(metrics):
        if not m.get("metricId"):
            raise ApiError(400, f"study_spec.metrics[{i}].metric_id is required.")
        goal = _enum(m.get("goal"), StudySpec.MetricSpec.GoalType, f"study_spec.metrics[{i}].goal")
        if goal == "GOAL_TYPE_UNSPECIFIED":
            raise ApiError(400, f"study_spec.metrics[{i}].goal must be MAXIMIZE or MINIMIZE.")
        goals.append((m["metricId"], goal))
    algorithm = _enum(spec.get("algorithm"), StudySpec.Algorithm, "study_spec.algorithm")
    params = spec.get("parameters") or []
    if not params:
        raise ApiError(400, "HyperparameterTuningJob.study_spec.parameters is required.")
    parsed = [_parameter(p, i, algorithm) for i, p in enumerate(params)]
    seen: set[str] = set()
    for p in parsed:
        if p["id"] in seen:
            raise ApiError(400, f"study_spec.parameters: parameter_id {p['id']!r} is used more than once.")
        seen.add(p["id"])
    selection = _enum(spec.get("measurementSelectionType"), StudySpec.MeasurementSelectionType,
                      "study_spec.measurement_selection_type")
    return {"metrics": goals, "algorithm": algorithm, "parameters": parsed, "selection": selection}


def _count(body: dict[str, Any], key: str, snake: str, *, required: bool) -> int:
    raw = body.get(key)
    if raw in (None, "") and not required:
        return 0
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"HyperparameterTuningJob.{snake} is required and must be a positive integer.") from None
    if value < (1 if required else 0):
        raise ApiError(400, f"HyperparameterTuningJob.{snake} must be {'positive' if required else 'at least 0'}, "
                            f"got {value}.")
    return value


def validate(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    """The request checked as Vertex checks it (400 INVALID_ARGUMENT); the parsed study."""
    if not body.get("displayName"):
        raise ApiError(400, "HyperparameterTuningJob.display_name is required.")
    study = _study(body)
    max_trials = _count(body, "maxTrialCount", "max_trial_count", required=True)
    parallel = _count(body, "parallelTrialCount", "parallel_trial_count", required=True)
    _count(body, "maxFailedTrialCount", "max_failed_trial_count", required=False)
    if parallel > max_trials:
        raise ApiError(400, f"HyperparameterTuningJob.parallel_trial_count ({parallel}) must not exceed "
                            f"max_trial_count ({max_trials}).")
    spec = body.get("trialJobSpec") or {}
    checks.worker_pools(spec.get("workerPoolSpecs") or [], "hyperparameter_tuning_job.trial_job_spec", b.region)
    checks.tensorboard(b.tensorboards, spec.get("tensorboard"), spec.get("serviceAccount"),
                       "hyperparameter_tuning_job.trial_job_spec")
    if not (spec.get("baseOutputDirectory") or {}).get("outputUriPrefix"):
        raise ApiError(400, "trial_job_spec.base_output_directory.output_uri_prefix is required by the local stand-in "
                            "(each trial writes under <prefix>/<trial id>/).")
    return study


def create(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    """hyperparameterTuningJobs.create: refused as Vertex refuses it, else recorded PENDING and started."""
    study = validate(b, body)
    rid = b.new_id()
    job = {**copy.deepcopy(body), "name": f"{b.parent()}/hyperparameterTuningJobs/{rid}", "state": "JOB_STATE_PENDING",
           "trials": [], "createTime": now(), "updateTime": now()}
    with b.lock:
        b.tuning_jobs[rid] = job
    threading.Thread(target=_run, args=(b, job, study), daemon=True, name=f"tuning-{rid}").start()
    return copy.deepcopy(job)


def cancel(b: Backend, rid: str) -> None:
    """No new trial starts; running trials' custom jobs are cancelled; the job ends CANCELLED once they stop."""
    with b.lock:
        job = b.tuning_jobs[rid]
        if job["state"] in _TERMINAL:
            return
        job.update(state="JOB_STATE_CANCELLING", updateTime=now())
        running = [t["customJob"].rsplit("/", 1)[1] for t in job["trials"] if t["state"] == "ACTIVE" and t.get("customJob")]
    for jid in running:
        b.cancel_pipeline(jid, kind="customjob")


# --- suggestions ---------------------------------------------------------------------------------------------------


def _grid(parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import itertools

    axes = [p["values"] if "values" in p else list(range(p["min"], p["max"] + 1)) for p in parameters]
    return [dict(zip([p["id"] for p in parameters], combo)) for combo in itertools.product(*axes)]


def _draw(p: dict[str, Any], rng: random.Random) -> Any:
    if "values" in p:
        return rng.choice(p["values"])
    lo, hi = p["min"], p["max"]
    if p["scale"] == "UNIT_LOG_SCALE":
        x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    elif p["scale"] == "UNIT_REVERSE_LOG_SCALE":
        x = hi + lo - math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        x = rng.uniform(lo, hi)
    return min(hi, max(lo, round(x))) if p["kind"] == "integer" else x


def suggestions(study: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """The first `count` trials' values: the grid in order (at most its size), else seeded random draws."""
    if study["algorithm"] == "GRID_SEARCH":
        return _grid(study["parameters"])[:count]
    rng = random.Random(seed)
    return [{p["id"]: _draw(p, rng) for p in study["parameters"]} for _ in range(count)]


def _arg(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)  # 2.0 stays 2.0, as Vertex prints a DOUBLE
    return str(value)


# --- measurements --------------------------------------------------------------------------------------------------


def read_measurements(path: Path, metric_ids: list[str]) -> list[dict[str, Any]]:
    """Measurements (step order) from a cloudml-hypertune file: each line carries one tag at one global step."""
    by_step: dict[int, dict[str, float]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
            step = int(float(entry.get("global_step", 0)))
        except (ValueError, TypeError, AttributeError):
            continue
        for tag in metric_ids:
            if tag in entry:
                try:
                    by_step.setdefault(step, {})[tag] = float(entry[tag])
                except (TypeError, ValueError):
                    continue
    return [{"stepCount": str(step), "metrics": [{"metricId": k, "value": v} for k, v in values.items()]}
            for step, values in sorted(by_step.items())]


def final_measurement(measurements: list[dict[str, Any]], study: dict[str, Any]) -> dict[str, Any] | None:
    """LAST_MEASUREMENT (Vertex's default) or BEST_MEASUREMENT by the first metric's goal."""
    metric, goal = study["metrics"][0]
    having = [m for m in measurements if any(x["metricId"] == metric for x in m["metrics"])]
    if not having:
        return None
    if study["selection"] != "BEST_MEASUREMENT":
        return having[-1]

    def value(m: dict[str, Any]) -> float:
        return next(x["value"] for x in m["metrics"] if x["metricId"] == metric)

    return (max if goal == "MAXIMIZE" else min)(having, key=value)


# --- the run -------------------------------------------------------------------------------------------------------


def _trial_job(job: dict[str, Any], tid: str, values: dict[str, Any], metric_file: Path) -> dict[str, Any]:
    """The trial's CustomJob body: the trial job spec, the values as args, its own output folder and metric file."""
    spec = copy.deepcopy(job["trialJobSpec"])
    extra = [f"--{k}={_arg(v)}" for k, v in values.items()]
    env = [{"name": "CLOUD_ML_HP_METRIC_FILE", "value": str(metric_file)}, {"name": "CLOUD_ML_TRIAL_ID", "value": tid}]
    for pool in spec.get("workerPoolSpecs", []):
        runner = pool.get("containerSpec") or pool.get("pythonPackageSpec")
        if runner is not None:
            runner["args"] = [*(runner.get("args") or []), *extra]
            runner["env"] = [*(runner.get("env") or []), *env]
    base = spec["baseOutputDirectory"]["outputUriPrefix"].rstrip("/")
    spec["baseOutputDirectory"] = {"outputUriPrefix": f"{base}/{tid}"}
    return {"displayName": f"{job['displayName']}-trial-{tid}", "jobSpec": spec}


def _run_trial(b: Backend, job: dict[str, Any], study: dict[str, Any], tid: str, values: dict[str, Any]) -> None:
    jid = job["name"].rsplit("/", 1)[1]
    metric_file = b.workdir / "jobs" / f"tuning-{jid}" / f"trial-{tid}" / "output.metrics"
    metric_file.parent.mkdir(parents=True, exist_ok=True)
    trial: dict[str, Any] = {"id": tid, "state": "ACTIVE", "startTime": now(),
                             "parameters": [{"parameterId": k, "value": v} for k, v in values.items()]}
    child_id = b.new_id()
    child = {**_trial_job(job, tid, values, metric_file), "name": f"{b.parent()}/customJobs/{child_id}",
             "state": "JOB_STATE_PENDING", "createTime": now(), "updateTime": now()}
    with b.lock:
        if job["state"] == "JOB_STATE_CANCELLING":
            return
        b.custom_jobs[child_id] = child
        trial["customJob"] = child["name"]
        job["trials"].append(trial)
        job["updateTime"] = now()
    b.start_training(child, "customjob")
    while True:
        with b.lock:
            state = child["state"]
        if state in _TERMINAL:
            break
        time.sleep(_POLL_S)
    measurements = read_measurements(metric_file, [m for m, _ in study["metrics"]])
    final = final_measurement(measurements, study)
    with b.lock:
        trial.update(measurements=measurements, endTime=now())
        if state == "JOB_STATE_SUCCEEDED" and final is not None:
            trial.update(state="SUCCEEDED", finalMeasurement=final)
        elif state == "JOB_STATE_CANCELLED":
            trial.update(state="INFEASIBLE", infeasibleReason="The trial was stopped: the tuning job was cancelled.")
        elif state == "JOB_STATE_FAILED":
            error = (child.get("error") or {}).get("message", "")
            trial.update(state="INFEASIBLE", infeasibleReason=f"The trial's custom job {child['name']} failed: {error}")
        else:
            trial.update(state="INFEASIBLE", infeasibleReason=(
                f"The trial reported no value for metric {study['metrics'][0][0]!r} (read from {metric_file}, "
                "cloudml-hypertune's format)."))
        job["updateTime"] = now()


def _run(b: Backend, job: dict[str, Any], study: dict[str, Any]) -> None:
    jid = job["name"].rsplit("/", 1)[1]
    max_trials, parallel = int(job["maxTrialCount"]), int(job["parallelTrialCount"])
    max_failed = int(job.get("maxFailedTrialCount") or 0)
    width = max(1, min(parallel, os.cpu_count() or 1))  # this machine's cores bound the trials at once
    if study["algorithm"] == "ALGORITHM_UNSPECIFIED":
        log.info("tuning job %s: Vertex's default (Bayesian) search runs as random search in the stand-in", jid)
    plan = suggestions(study, max_trials, seed=int(jid))
    with b.lock:
        job.update(state="JOB_STATE_RUNNING", startTime=now(), updateTime=now())
    try:
        running: list[threading.Thread] = []
        for n, values in enumerate(plan, 1):
            while True:
                running = [t for t in running if t.is_alive()]
                with b.lock:
                    stop = job["state"] == "JOB_STATE_CANCELLING" or (
                        max_failed and sum(t["state"] == "INFEASIBLE" for t in job["trials"]) >= max_failed)
                if stop or len(running) < width:
                    break
                time.sleep(_POLL_S)
            if stop:
                break
            worker = threading.Thread(target=_run_trial, args=(b, job, study, str(n), values), daemon=True,
                                      name=f"tuning-{jid}-trial-{n}")
            worker.start()
            running.append(worker)
        for worker in running:
            worker.join()
        with b.lock:
            _finish(job, max_failed)
    except Exception as err:  # a stand-in bug must still end the job, never leave the SDK polling forever
        log.exception("tuning job %s crashed", jid)
        with b.lock:
            job.update(state="JOB_STATE_FAILED", endTime=now(), updateTime=now(),
                       error=ApiError(500, f"local stand-in error: {type(err).__name__}: {err}").rpc_status())


def _finish(job: dict[str, Any], max_failed: int) -> None:
    trials = job["trials"]
    infeasible = [t for t in trials if t["state"] == "INFEASIBLE"]
    succeeded = [t for t in trials if t["state"] == "SUCCEEDED"]
    summary = f"{len(succeeded)} of {len(trials)} trials succeeded, {len(infeasible)} infeasible"
    if infeasible:
        summary += f" (first: trial {infeasible[0]['id']}: {infeasible[0]['infeasibleReason']})"
    if job["state"] == "JOB_STATE_CANCELLING":
        state, error = "JOB_STATE_CANCELLED", {"code": 1, "message": f"CANCELED: {summary}"}
    elif not succeeded:
        state, error = "JOB_STATE_FAILED", ApiError(400, f"All trials failed: {summary}.",
                                                    "FAILED_PRECONDITION").rpc_status()
    elif max_failed and len(infeasible) >= max_failed:
        state, error = "JOB_STATE_FAILED", ApiError(400, f"{len(infeasible)} trials failed, the job's "
                                                    f"max_failed_trial_count ({max_failed}): {summary}.",
                                                    "FAILED_PRECONDITION").rpc_status()
    else:
        state, error = "JOB_STATE_SUCCEEDED", None
    log.info("tuning job %s: %s", job["name"], summary)
    job.update(state=state, endTime=now(), updateTime=now(), **({"error": error} if error else {}))
