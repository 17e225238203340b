"""Vertex AI hyperparameter tuning over the same entry point and the same space file as the local sweep.

`flant5 vertex tune --space params/sweeps/tiny.yaml` builds an `aiplatform.HyperparameterTuningJob` around the very
`CustomJob` that `vertex train` would run (its worker pools come from `specs.training_request`), with the space file's
parameters as the study's `parameter_spec` and its metric as `metric_spec`. Each trial gets its values as
`--name=value` after the job's own arguments; the entry point turns them into `--set name=value` (`task.trial_args`)
and the trainer reports every validation score in cloudml-hypertune's format (`flant5_lib.train.hypertune`).

The SDK has no best-trial helper (googleapis/python-aiplatform#1545): `summarize` ranks the trials by the study's goal
and gives the best one's model folder, ready for `flant5 vertex upload --artifact-uri`.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError, ParamsError
from flant5_lib.search_space import SearchSpace
from flant5_lib.vertex import presets, rules, specs

log = logging.getLogger(__name__)

# the space file's algorithm -> the SDK's search_algorithm (None: Vertex's default, Bayesian optimisation)
ALGORITHMS: dict[str, str | None] = {"tpe": None, "grid": "grid", "random": "random"}
_REST_ALGORITHMS = {"tpe": None, "grid": "GRID_SEARCH", "random": "RANDOM_SEARCH"}
_SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE"}


# --- the study: parameters, metric, algorithm ---------------------------------------------------------------------


def _value_text(value: Any) -> str:
    """A categorical value as Vertex carries it (a string) that `--set` reads back as the same value."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parameter_spec(space: SearchSpace) -> dict[str, Any]:
    """The SDK's `parameter_spec`: one Double/Integer/Discrete/CategoricalParameterSpec per space parameter."""
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    out: dict[str, Any] = {}
    for name, p in space.parameters.items():
        if p.type == "double":
            out[name] = hpt.DoubleParameterSpec(min=p.min, max=p.max, scale=p.scale)
        elif p.type == "integer":
            out[name] = hpt.IntegerParameterSpec(min=p.min, max=p.max, scale=p.scale)
        elif p.type == "discrete":
            out[name] = hpt.DiscreteParameterSpec(values=[float(v) for v in p.values], scale=p.scale)
        else:
            out[name] = hpt.CategoricalParameterSpec(values=[_value_text(v) for v in p.values])
    return out


def metric_spec(space: SearchSpace) -> dict[str, str]:
    return {space.metric: space.goal}


def measurement_selection(params: Params) -> str:
    """'best' when the trainer publishes its best checkpoint (keep_best_model), so a trial's value is its model's."""
    return "best" if params.keep_best_model else "last"


def _study_rest(params: Params, space: SearchSpace) -> dict[str, Any]:
    """The request's studySpec as REST JSON (enum names; the SDK sends their numbers)."""
    parameters = []
    for name, p in space.parameters.items():
        entry: dict[str, Any] = {"parameterId": name}
        if p.type in ("double", "integer"):
            key = "doubleValueSpec" if p.type == "double" else "integerValueSpec"
            entry[key] = {"minValue": p.min, "maxValue": p.max}
        elif p.type == "discrete":
            entry["discreteValueSpec"] = {"values": [float(v) for v in p.values]}
        else:
            entry["categoricalValueSpec"] = {"values": [_value_text(v) for v in p.values]}
        if p.type != "categorical":
            entry["scaleType"] = _SCALES[p.scale]
        parameters.append(entry)
    study: dict[str, Any] = {"metrics": [{"metricId": space.metric, "goal": space.goal.upper()}],
                             "parameters": parameters,
                             "measurementSelectionType": f"{measurement_selection(params).upper()}_MEASUREMENT"}
    if _REST_ALGORITHMS[space.algorithm]:
        study["algorithm"] = _REST_ALGORITHMS[space.algorithm]
    return study


# --- the trials' job ------------------------------------------------------------------------------------------------


def trial_params(params: Params, space: SearchSpace) -> Params:
    """The params every trial reads (staged once): the trainer picks each trial's checkpoint by the study's metric."""
    out = presets.resolve(params).model_copy()
    out.metric_for_best_model = space.metric  # validated on assignment
    return out


def _snake(obj: Any) -> Any:
    """REST camelCase keys -> the SDK's snake_case (`containerSpec` -> `container_spec`)."""
    if isinstance(obj, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): _snake(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_snake(v) for v in obj]
    return obj


def _camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def trial_job_inputs(params: Params) -> dict[str, Any]:
    """Worker pools, output folder, service account, TensorBoard and scheduling of `vertex train`'s job, as snake_case
    (one source: `specs.training_request`, so a trial runs exactly what `vertex train` runs)."""
    return _snake(specs.training_request(params)["body"]["trainingTaskInputs"])


def tuning_request(params: Params, space: SearchSpace) -> dict[str, Any]:
    """The hyperparameterTuningJobs.create call (REST JSON) that `run_tuning` makes through the SDK."""
    params = trial_params(params, space)
    inputs = trial_job_inputs(params)
    job_spec: dict[str, Any] = {"workerPoolSpecs": _camel(inputs["worker_pool_specs"]),
                                "baseOutputDirectory": {"outputUriPrefix": specs.train_output_dir(params)}}
    if inputs.get("service_account"):
        job_spec["serviceAccount"] = inputs["service_account"]
    if inputs.get("tensorboard"):
        job_spec["tensorboard"] = inputs["tensorboard"]
    if inputs.get("scheduling"):
        job_spec["scheduling"] = _camel(inputs["scheduling"])
    body = {"displayName": params.train_display_name, "studySpec": _study_rest(params, space),
            "maxTrialCount": space.max_trials, "parallelTrialCount": space.parallel_trials, "trialJobSpec": job_spec}
    return {"method": "POST", "url": f"{specs.api_base(params)}/v1/{specs.parent(params)}/hyperparameterTuningJobs",
            "uploads_first": {"params": specs.params_uri(params)}, "body": body,
            "trial_args": "each trial appends --NAME=VALUE for every parameter to every pool's args"}


# --- checks and price -------------------------------------------------------------------------------------------


def problems(params: Params, space: SearchSpace) -> list[str]:
    """Everything that stops a tuning job before it is sent: the Vertex rule set, then the study's own rules."""
    return [*rules.problems(params), *rules.tuning_problems(params, space)]


def require(params: Params, space: SearchSpace, source: str = "space") -> None:
    found = problems(params, space)
    if found:
        raise ParamsError(f"preflight found {len(found)} problem(s) ({source}):\n" + "\n".join(f"  {p}" for p in found))


def estimate(params: Params, space: SearchSpace, prices: dict[str, Any]) -> dict[str, Any]:
    """Cost of max_trials trials, each between the cheapest and the costliest value of every parameter (fewer or
    more epochs, smaller or larger batches...), and the wall time with parallel_trials at once."""
    from flant5_lib.config import build_params
    from flant5_lib.vertex import estimate as est

    base = params.model_dump()
    cheap, costly = dict(base), dict(base)
    for name, spec in space.parameters.items():
        priced = []
        for value in spec.candidates():
            try:
                priced.append((est.estimate(build_params({**base, name: value}), prices)["usd"], value))
            except (ParamsError, CloudError):
                continue
        if priced:
            cheap[name] = min(priced, key=lambda x: x[0])[1]
            costly[name] = max(priced, key=lambda x: x[0])[1]
    low, high = est.estimate(build_params(cheap), prices), est.estimate(build_params(costly), prices)
    waves = math.ceil(space.max_trials / space.parallel_trials)
    return {"trials": space.max_trials, "parallel_trials": space.parallel_trials,
            "usd_per_trial_at_least": low["usd"], "usd_per_trial_at_most": high["usd"],
            "usd_at_most": round(high["usd"] * space.max_trials, 2),
            "hours_at_most": round(high["total_hours"] * waves, 2), "costliest_trial": high,
            "note": "each trial priced at the cheapest and the costliest value of every parameter; " + high["note"]}


def format_estimate(e: dict[str, Any]) -> str:
    return (f"estimate: {e['trials']} trials, {e['parallel_trials']} at a time: at most ~${e['usd_at_most']} "
            f"(~${e['usd_per_trial_at_least']} to ~${e['usd_per_trial_at_most']} a trial) and ~{e['hours_at_most']} h; "
            f"prices read {e['costliest_trial']['prices_read_on']}: list prices to check")


# --- the job --------------------------------------------------------------------------------------------------------


def run_tuning(params: Params, space: SearchSpace, *, wait: bool = True) -> Any:
    """Stage the params, then create the HyperparameterTuningJob (and wait for it unless `wait=False`)."""
    from flant5_lib.vertex import jobs

    rules.check_request(params, roles=("train",))
    require(params, space)
    params = trial_params(params, space)
    aiplatform = jobs.init_sdk(params)
    jobs.stage_inputs(params)
    inputs = trial_job_inputs(params)
    custom_job = aiplatform.CustomJob(display_name=params.train_display_name,
                                      worker_pool_specs=inputs["worker_pool_specs"],
                                      base_output_dir=specs.train_output_dir(params),
                                      staging_bucket=params.staging_bucket)
    job = aiplatform.HyperparameterTuningJob(
        display_name=params.train_display_name, custom_job=custom_job, metric_spec=metric_spec(space),
        parameter_spec=parameter_spec(space), max_trial_count=space.max_trials,
        parallel_trial_count=space.parallel_trials, search_algorithm=ALGORITHMS[space.algorithm],
        measurement_selection=measurement_selection(params))
    try:
        job.run(service_account=params.service_account, tensorboard=params.tensorboard_resource,
                scheduling_strategy=jobs.scheduling_strategy(params), sync=wait)
    except RuntimeError as err:  # the SDK's answer to a job that ended FAILED or CANCELLED: its trials still count
        if getattr(job, "_gca_resource", None) is None or not job._gca_resource.name:
            raise
        raise TuningFailed(job, err) from None
    if not wait:
        job.wait_for_resource_creation()
    return job


class TuningFailed(CloudError):
    """The job ended FAILED or CANCELLED; `job` still holds its trials (a crashed trial names its log)."""

    def __init__(self, job: Any, err: BaseException) -> None:
        first = " ".join(str(err).split())[:400]
        super().__init__(f"vertex tune: {job.resource_name} ended {job.state.name}: {first}")
        self.job = job


def find_job(params: Params, name: str | None = None) -> Any:
    """The tuning job `name` (resource name or id), else the newest one named train_display_name."""
    from flant5_lib.vertex import jobs

    aiplatform = jobs.init_sdk(params)
    if name:
        return aiplatform.HyperparameterTuningJob.get(name)
    found = aiplatform.HyperparameterTuningJob.list(filter=f'display_name="{params.train_display_name}"',
                                                    order_by="create_time desc")
    if not found:
        raise CloudError(f"train_display_name: no tuning job named {params.train_display_name!r}; run "
                         "`flant5 vertex tune` first (or pass --job NAME)")
    return found[0]


# --- results --------------------------------------------------------------------------------------------------------


def _metrics(measurement: Any) -> dict[str, float]:
    return {m.metric_id: float(m.value) for m in measurement.metrics} if measurement else {}


def summarize(job: Any) -> dict[str, Any]:
    """The best trial (by the study's first metric and goal) and every trial, from the job's REST resource."""
    res = job.gca_resource
    spec = res.study_spec.metrics[0]
    metric, goal = spec.metric_id, spec.goal.name.lower()
    base = res.trial_job_spec.base_output_directory.output_uri_prefix.rstrip("/")
    trials = []
    for t in res.trials:
        values = _metrics(t.final_measurement)
        trials.append({"id": t.id, "state": t.state.name, "parameters": {p.parameter_id: p.value for p in t.parameters},
                       metric: values.get(metric), "step": int(t.final_measurement.step_count) if values else None,
                       "model_dir": f"{base}/{t.id}/model" if base else None, "custom_job": t.custom_job or None,
                       "infeasible_reason": t.infeasible_reason or None})
    scored = [t for t in trials if t["state"] == "SUCCEEDED" and t[metric] is not None]
    best = (max if goal == "maximize" else min)(scored, key=lambda t: t[metric]) if scored else None
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return {"tuning_job": res.name, "state": res.state.name, "metric": metric, "goal": goal,
            "best_trial": best, "trial_states": counts, "trials": trials,
            "error": res.error.message or None}


def format_table(summary: dict[str, Any]) -> str:
    """The trials as a text table, best first marked with '*'."""
    metric = summary["metric"]
    names = sorted({k for t in summary["trials"] for k in t["parameters"]})
    best = (summary["best_trial"] or {}).get("id")
    head = ["", "trial", "state", metric, *names]
    rows = [head]
    for t in summary["trials"]:
        value = t[metric]
        rows.append(["*" if t["id"] == best else "", t["id"], t["state"], "" if value is None else f"{value:.4g}",
                     *(_short(t["parameters"].get(n)) for n in names)])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    states = ", ".join(f"{n} {s}" for s, n in sorted(summary["trial_states"].items()))
    lines.append(f"{len(summary['trials'])} trials: {states or 'none yet'}; job {summary['state']}")
    if best:
        lines.append(f"best: trial {best} ({metric} {summary['best_trial'][metric]:.4g}, {summary['goal']}); "
                     f"model {summary['best_trial']['model_dir']}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
