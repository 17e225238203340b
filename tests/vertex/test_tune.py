"""Hyperparameter tuning: `flant5 vertex tune` and the real SDK's `HyperparameterTuningJob` against the stand-in.

Nothing is mocked: each trial is a custom job that runs the project image's entry point (`flant5_lib.vertex.task`)
with the trial's `--name=value` arguments, the trainer reports every validation in cloudml-hypertune's format, and
the stand-in reads those files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flant5_lib import storage
from flant5_lib.config import load_params
from flant5_lib.search_space import parse_space
from flant5_lib.train import hypertune
from flant5_lib.vertex import images, jobs, tune
from flant5_lib.vertex.localstack import LocalStack
from flant5_lib.vertex.localstack.tuning import read_measurements
from flant5_lib.vertex.task import trial_args
from tests.helpers.vertex import vertex_cli

# a trial: 2 optimiser steps of the tiny model, validated after each (loss and ROUGE on 4 dialogues)
TRIAL = {"dataset": "synthetic:64", "model_name": "tiny", "max_steps": 2, "eval_strategy": "steps", "eval_steps": 1,
         "eval_rouge_samples": 4, "per_device_train_batch_size": 8, "logging_steps": 1}
MISSING_MODEL = "/nonexistent/flan-t5-model"





def _files(tmp_path: Path, name: str, space: dict[str, Any], **params: Any) -> tuple[str, str]:
    params_file, space_file = tmp_path / f"{name}.yaml", tmp_path / f"{name}-space.yaml"
    params_file.write_text(yaml.safe_dump({**TRIAL, "train_display_name": name, **params}))
    space_file.write_text(yaml.safe_dump(space))
    return str(params_file), str(space_file)


def _proto(body: dict[str, Any]) -> Any:
    """A request body as the API reads it: enum names and numbers, int64 strings and ints compare equal."""
    from google.cloud.aiplatform_v1.types import HyperparameterTuningJob

    return HyperparameterTuningJob.from_json(json.dumps(body))


def _sdk_job(stack: LocalStack, name: str, parameter_spec: dict[str, Any], *, max_trials: int, parallel: int,
             metric: dict[str, str] | None = None, algorithm: str | None = "grid", **params: Any) -> Any:
    """An aiplatform.HyperparameterTuningJob around the project image's CustomJob, as `vertex tune` builds it."""
    p = load_params(None, {**stack.params_overrides(), **TRIAL, "train_display_name": name, **params})
    aiplatform = jobs.init_sdk(p)
    jobs.stage_inputs(p)
    pools = tune.trial_job_inputs(p)["worker_pool_specs"]
    custom = aiplatform.CustomJob(display_name=name, worker_pool_specs=pools,
                                  base_output_dir=f"{stack.bucket}/runs/{name}", staging_bucket=stack.bucket)
    return aiplatform.HyperparameterTuningJob(
        display_name=name, custom_job=custom, metric_spec=metric or {"rougeLsum": "maximize"},
        parameter_spec=parameter_spec, max_trial_count=max_trials, parallel_trial_count=parallel,
        search_algorithm=algorithm)


def _record(stack: LocalStack, name: str) -> dict[str, Any]:
    """The stand-in's own record of a tuning job (times included)."""
    with stack.backend.lock:
        return json.loads(json.dumps(stack.backend.tuning_jobs[name.rsplit("/", 1)[1]]))


# --- the whole path: CLI -> SDK -> stand-in -> trials -> metric files -> best trial ----------------------------------


@pytest.mark.slow
def test_tune_runs_every_trial_and_names_the_best_from_what_the_trials_reported(
        stack: LocalStack, state_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = {"parameters": {"learning_rate": {"type": "discrete", "values": [1.0e-4, 3.0e-2]}},
             "algorithm": "grid", "metric": "eval_loss", "goal": "minimize", "max_trials": 2, "parallel_trials": 2}
    params_file, space_file = _files(tmp_path, "tune-best", space)
    stack.clear_requests()
    code, out, err = vertex_cli(capsys, "tune", "--params", params_file, "--space", space_file, "--local-stack", state_file)
    assert code == 0, err[-3000:]
    assert "estimate: 2 trials, 2 at a time" in err and "best: trial" in err  # the price first, the table last
    summary = json.loads(out)
    assert summary["state"] == "JOB_STATE_SUCCEEDED" and summary["trial_states"] == {"SUCCEEDED": 2}

    # the SDK sent exactly what --dry-run prints, around the project image's entry point
    p = load_params(params_file, stack.params_overrides())
    (req,) = stack.requests("/hyperparameterTuningJobs", method="POST")
    assert _proto(req["body"]) == _proto(tune.tuning_request(p, parse_space(space))["body"])
    (pool,) = req["body"]["trialJobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"]["imageUri"] == images.train_image(p) and "command" not in pool["containerSpec"]

    record = _record(stack, summary["tuning_job"])
    best_losses = {}
    for trial, row in zip(record["trials"], summary["trials"]):
        lr = trial["parameters"][0]["value"]
        # the trial's custom job ran the image's entry point with --learning_rate=..., and the trainer used it
        child = stack.backend.custom_jobs[trial["customJob"].rsplit("/", 1)[1]]
        args = child["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
        assert args[-1] == f"--learning_rate={lr!r}" and args[:2] == ["--params", p.staging_bucket + "/params/tune-best.yaml"]
        model_dir = f"{stack.bucket}/runs/tune-best/{trial['id']}/model"  # AIP_MODEL_DIR under <base>/<trial id>/
        assert row["model_dir"] == model_dir
        used = yaml.safe_load(storage.read_text(f"{model_dir}/flant5_params.yaml"))
        assert used["learning_rate"] == pytest.approx(lr) and used["metric_for_best_model"] == "eval_loss"
        # every validation was reported, and the final measurement is the best of them (the published checkpoint)
        history = json.loads(storage.read_text(f"{model_dir}/eval_history.json"))
        assert [int(m["stepCount"]) for m in trial["measurements"]] == [r["step"] for r in history] == [1, 2]
        for m, r in zip(trial["measurements"], history):
            assert m["metrics"] == [{"metricId": "eval_loss", "value": pytest.approx(r["eval_loss"])}]
        best = min(history, key=lambda r: r["eval_loss"])
        assert row["eval_loss"] == pytest.approx(best["eval_loss"]) and row["step"] == best["step"]
        best_losses[row["id"]] = row["eval_loss"]
    assert summary["best_trial"]["id"] == min(best_losses, key=best_losses.get)
    assert len(set(best_losses.values())) == 2  # the two learning rates gave different losses: the pick means something
    # two at once: each trial started before the other ended
    a, b = record["trials"]
    assert a["startTime"] < b["endTime"] and b["startTime"] < a["endTime"]

    code, again, _ = vertex_cli(capsys, "tune-result", "--params", params_file, "--local-stack", state_file)
    assert code == 0 and json.loads(again)["best_trial"] == summary["best_trial"]


@pytest.mark.slow
def test_trials_that_report_nothing_or_crash_end_infeasible_and_the_others_go_on(stack: LocalStack) -> None:
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    job = _sdk_job(stack, "tune-mixed", {
        "eval_strategy": hpt.CategoricalParameterSpec(values=["steps", "no"]),
        "model_name": hpt.CategoricalParameterSpec(values=["tiny", MISSING_MODEL]),
    }, max_trials=4, parallel=2)
    job.run()  # one trial succeeded: the job did too
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    trials = {(t.parameters[0].value, t.parameters[1].value): t for t in job.trials}
    assert len(trials) == 4  # the grid, in order, all of it
    ok = trials[("steps", "tiny")]
    assert ok.state.name == "SUCCEEDED" and ok.final_measurement.metrics[0].metric_id == "rougeLsum"
    quiet = trials[("no", "tiny")]  # trained, never validated: nothing reported
    assert quiet.state.name == "INFEASIBLE" and "reported no value for metric 'rougeLsum'" in quiet.infeasible_reason
    for key in (("steps", MISSING_MODEL), ("no", MISSING_MODEL)):
        crashed = trials[key]
        assert crashed.state.name == "INFEASIBLE" and "non-zero status" in crashed.infeasible_reason
        log_path = crashed.infeasible_reason.split("(full log: ")[1].split(")")[0]
        assert MISSING_MODEL in Path(log_path).read_text()  # recorded with its log, which names the cause
    summary = tune.summarize(job)
    assert summary["best_trial"]["id"] == ok.id and summary["trial_states"] == {"INFEASIBLE": 3, "SUCCEEDED": 1}


@pytest.mark.slow
def test_a_job_whose_every_trial_fails_says_how_many_in_one_line(
        stack: LocalStack, state_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = {"parameters": {"model_name": {"type": "categorical", "values": [MISSING_MODEL]}}, "algorithm": "grid",
             "max_trials": 1}
    params_file, space_file = _files(tmp_path, "tune-none", space)
    code, out, err = vertex_cli(capsys, "tune", "--params", params_file, "--space", space_file, "--local-stack", state_file)
    assert code == 2 and out == "" and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("flant5 vertex: error: vertex tune: ") and "ended JOB_STATE_FAILED" in line
    assert "0 of 1 trials succeeded, 1 infeasible" in line
    assert "1 trials: 1 INFEASIBLE; job JOB_STATE_FAILED" in err  # the table came first


@pytest.mark.slow
def test_cancelling_a_tuning_job_stops_its_running_trial_and_starts_no_other(stack: LocalStack) -> None:
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    job = _sdk_job(stack, "tune-cancel", {"learning_rate": hpt.DoubleParameterSpec(min=1e-4, max=1e-2, scale="log")},
                   max_trials=3, parallel=1, algorithm="random", max_steps=100_000)  # a trial that would run for hours
    job.run(sync=False)
    job.wait_for_resource_creation()
    rid = job.resource_name.rsplit("/", 1)[1]
    deadline = time.monotonic() + 180
    while True:  # wait for the first trial's trainer process to exist
        with stack.backend.lock:
            trials = list(stack.backend.tuning_jobs[rid]["trials"])
            child = trials[0]["customJob"].rsplit("/", 1)[1] if trials else None
            proc = stack.backend.processes.get(child) if child else None
        if proc is not None:
            break
        assert time.monotonic() < deadline, "the first trial never started"
        time.sleep(0.1)
    job.cancel()
    while job.state.name not in ("JOB_STATE_CANCELLED", "JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED"):
        assert time.monotonic() < deadline, f"still {job.state.name}"
        time.sleep(0.2)
    assert job.state.name == "JOB_STATE_CANCELLED" and job.gca_resource.error.code == 1  # Code.CANCELLED
    (trial,) = job.trials  # no second trial started
    assert trial.state.name == "INFEASIBLE" and "cancelled" in trial.infeasible_reason
    assert stack.backend.custom_jobs[child]["state"] == "JOB_STATE_CANCELLED" and proc.poll() is not None


# --- refusals: before anything runs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "options", "needle"), [
    ({"lr": ("double", 1e-3, 1e-2, "linear")}, {"max_trial_count": 2, "parallel_trial_count": 3},
     "parallel_trial_count (3) must not exceed max_trial_count (2)"),
    ({"lr": ("double", 1e-3, 1e-2, "linear")}, {"search_algorithm": "grid"}, "grid search does not support DOUBLE"),
    ({"lr": ("double", 0.0, 1e-2, "log")}, {}, "UNIT_LOG_SCALE needs every value above 0"),
    ({"lr": ("double", 1e-2, 1e-3, "linear")}, {}, "min_value (0.01) must be less than max_value (0.001)"),
    ({"n": ("integer", 3, 3, "linear")}, {}, "min_value (3) must be less than max_value (3)"),
], ids=["parallel-over-max", "grid-double", "log-at-zero", "min-over-max", "empty-integer-range"])
def test_the_stand_in_refuses_what_vertex_refuses(stack: LocalStack, spec: dict[str, tuple[Any, ...]],
                                                 options: dict[str, Any], needle: str) -> None:
    from google.api_core import exceptions as gexc
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    made = {name: (hpt.DoubleParameterSpec if kind == "double" else hpt.IntegerParameterSpec)(min=lo, max=hi, scale=sc)
            for name, (kind, lo, hi, sc) in spec.items()}
    kw = {"max_trial_count": 2, "parallel_trial_count": 1, "search_algorithm": None, **options}
    job = _sdk_job(stack, "tune-refused", made, max_trials=kw.pop("max_trial_count"),
                   parallel=kw.pop("parallel_trial_count"), algorithm=kw.pop("search_algorithm"))
    before = len(stack.backend.tuning_jobs)
    with pytest.raises(gexc.BadRequest, match=needle.replace("(", r"\(").replace(")", r"\)")):
        job.run()
    assert len(stack.backend.tuning_jobs) == before  # nothing was created


@pytest.mark.parametrize(("space", "params", "needle"), [
    ({"parameters": {"learning_rat": {"type": "double", "min": 1e-3, "max": 1e-2}}}, {},
     "parameters.learning_rat: not a Params field (did you mean learning_rate?)"),
    ({"parameters": {"learning_rate": {"type": "double", "min": 1e-2, "max": 1e-3}}}, {},
     "min (0.01) must be below max (0.001)"),
    ({"parameters": {"learning_rate": {"type": "double", "min": 0, "max": 1e-3, "scale": "log"}}}, {},
     "scale log needs min above 0"),
    ({"parameters": {"learning_rate": {"type": "double", "min": 1e-3, "max": 1e-2, "scale": "cubic"}}}, {},
     "parameters.learning_rate.scale"),
    ({"parameters": {"learning_rate": {"type": "double", "min": 1e-3, "max": 1e-2}}, "max_trials": 2,
      "parallel_trials": 4}, {}, "parallel_trials: 4 is more than max_trials (2)"),
    ({"parameters": {"learning_rate": {"type": "double", "min": 1e-3, "max": 1e-2}}, "metric": "bleu"}, {},
     "metric: Input should be"),
    ({"parameters": {"learning_rate": {"type": "double", "min": 1e-3, "max": 1e-2}}}, {"eval_rouge_samples": 0, "metric_for_best_model": "eval_loss"},
     "metric: rougeLsum is reported only with eval_rouge_samples > 0"),
    ({"parameters": {"train_accelerator_count": {"type": "integer", "min": 1, "max": 2}}}, {},
     "parameters.train_accelerator_count: fixed by the job"),
    ({"parameters": {"eval_strategy": {"type": "categorical", "values": ["steps", "no"]}}}, {},
     "parameters.eval_strategy = 'no'"),
    ({"parameters": {"eval_rouge_samples": {"type": "discrete", "values": [0, 4]}}}, {},
     "parameters.eval_rouge_samples = 0: "),
], ids=["unknown-field", "min-over-max", "log-at-zero", "bad-scale", "parallel-over-max", "unknown-metric",
        "metric-not-reported", "fixed-by-the-job", "eval-off", "value-params-refuse"])
def test_a_bad_space_file_is_refused_before_any_request(stack: LocalStack, state_file: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], space: dict[str, Any],
                                                         params: dict[str, Any], needle: str) -> None:
    params_file, space_file = _files(tmp_path, "tune-bad", space, **params)
    stack.clear_requests()
    for argv in (["tune"], ["tune", "--dry-run"], ["preflight"]):
        code, out, err = vertex_cli(capsys, *argv, "--params", params_file, "--space", space_file, "--local-stack", state_file)
        assert code == 2 and "Traceback" not in err, err[-2000:]
        lines = [x for x in err.splitlines() if needle in x]
        assert len(lines) == 1, err  # one line names it
        assert out == ""
    assert stack.requests() == []  # nothing was sent, nothing staged


def test_dry_run_prints_the_request_and_the_price_of_every_trial(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = vertex_cli(capsys, "tune", "--params", "params/vertex-a100.yaml", "--space", "params/sweeps/tiny.yaml",
                          "--dry-run")
    assert code == 0, err
    req = json.loads(out)
    study = req["body"]["studySpec"]
    assert [p["parameterId"] for p in study["parameters"]] == ["learning_rate", "num_train_epochs", "label_smoothing",
                                                               "lr_scheduler_type"]
    assert study["parameters"][0]["scaleType"] == "UNIT_LOG_SCALE" and "algorithm" not in study  # tpe: Vertex's default
    assert req["body"]["maxTrialCount"] == 4 and req["body"]["parallelTrialCount"] == 2
    est = req["estimate"]
    # 1 or 2 epochs of SAMSum train: the costliest trial is the 2-epoch one, and 4 of them bound the bill
    assert est["usd_per_trial_at_least"] < est["usd_per_trial_at_most"]
    assert est["usd_at_most"] == pytest.approx(4 * est["usd_per_trial_at_most"])
    assert est["costliest_trial"]["samples_seen"] == 2 * est["costliest_trial"]["train_samples"]
    assert _proto(req["body"]).study_spec.parameters[3].categorical_value_spec.values == ["linear", "cosine"]


# --- the entry point: trial arguments and the metric file -------------------------------------------------------


def test_trial_arguments_become_params_overrides_and_other_arguments_pass_unchanged() -> None:
    job_args = ["--params", "gs://b/p.yaml", "--set", "seed=3"]
    assert trial_args(job_args) == job_args  # no tuning service: the same command as before
    assert trial_args([*job_args, "--learning_rate=0.003", "--lr-scheduler-type=cosine", "--params=gs://b/q.yaml"]) == [
        *job_args, "--set", "learning_rate=0.003", "--set", "lr_scheduler_type=cosine", "--params=gs://b/q.yaml"]


def test_an_unknown_trial_argument_is_one_line_from_the_entry_point(tmp_path: Path) -> None:
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(TRIAL))
    env = {k: v for k, v in os.environ.items() if k not in (hypertune.TRIAL_ID_ENV, hypertune.METRIC_FILE_ENV)}
    r = subprocess.run([sys.executable, "-m", "flant5_lib.vertex.task", "--params", str(params_file),
                        "--learning_rat=0.1"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "learning_rat" in x and "error" in x]
    assert line.startswith("flant5 train: error: ") and "unknown key" in line


def test_the_metric_file_is_cloudml_hypertunes_format(tmp_path: Path) -> None:
    from transformers import TrainerState

    path = tmp_path / "hypertune" / "output.metrics"
    callback = hypertune.HypertuneCallback(hypertune.MetricReporter(path, trial_id="7"))
    state = TrainerState()
    for step in range(1, 26):  # 25 validations x 5 tags: only the newest 100 lines are kept, as cloudml-hypertune does
        state.global_step = step
        callback.on_evaluate(None, state, None, metrics={"eval_loss": 5.0 - step / 10, "eval_rouge1": 10.0 + step,
                                                         "eval_rouge2": 1.0, "eval_rougeL": 9.0, "eval_rougeLsum": 9.5,
                                                         "eval_runtime": 1.0})
    lines = path.read_text().splitlines()
    assert len(lines) == 100
    first = json.loads(lines[0])
    assert first == {"global_step": "6", "rouge1": "16.0", "timestamp": first["timestamp"], "trial": "7"}
    assert list(first) == sorted(first) and isinstance(first["timestamp"], float)  # json.dumps(sort_keys=True)
    assert {next(k for k in json.loads(x) if k not in ("global_step", "timestamp", "trial")) for x in lines} == set(
        hypertune.TAGS)  # eval_runtime is not a tag
    # the stand-in reads these, and the line cloudml-hypertune's README shows, the same way
    (m,) = [m for m in read_measurements(path, ["eval_loss"]) if m["stepCount"] == "25"]
    assert m["metrics"] == [{"metricId": "eval_loss", "value": pytest.approx(2.5)}]
    readme = tmp_path / "readme.metrics"
    readme.write_text('{"global_step": "1000", "my_metric_tag": "0.987", "timestamp": 1525851440.123456, "trial": "0"}\n')
    assert read_measurements(readme, ["my_metric_tag"]) == [
        {"stepCount": "1000", "metrics": [{"metricId": "my_metric_tag", "value": 0.987}]}]


def test_the_trainer_reports_only_inside_a_tuning_trial(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(hypertune.TRIAL_ID_ENV, raising=False)
    monkeypatch.delenv(hypertune.METRIC_FILE_ENV, raising=False)
    assert hypertune.callbacks() == []  # the entry point runs unchanged without the service
    monkeypatch.setenv(hypertune.TRIAL_ID_ENV, "3")  # what Vertex sets in a trial's container
    (cb,) = hypertune.callbacks()
    assert cb.reporter.path == Path(hypertune.DEFAULT_METRIC_FILE) and cb.reporter.trial_id == "3"
    monkeypatch.setenv(hypertune.METRIC_FILE_ENV, str(tmp_path / "m"))
    (cb,) = hypertune.callbacks()
    assert cb.reporter.path == tmp_path / "m"


def test_the_final_measurement_is_the_last_or_the_best_by_the_goal() -> None:
    from flant5_lib.vertex.localstack.tuning import final_measurement

    steps = [{"stepCount": str(s), "metrics": [{"metricId": "rougeLsum", "value": v}]} for s, v in ((1, 3.0), (2, 5.0),
                                                                                                    (3, 4.0))]
    for selection, goal, step in (("LAST_MEASUREMENT", "MAXIMIZE", "3"), ("BEST_MEASUREMENT", "MAXIMIZE", "2"),
                                  ("BEST_MEASUREMENT", "MINIMIZE", "1"),
                                  ("MEASUREMENT_SELECTION_TYPE_UNSPECIFIED", "MAXIMIZE", "3")):
        study = {"metrics": [("rougeLsum", goal)], "selection": selection}
        assert final_measurement(steps, study)["stepCount"] == step, (selection, goal)
    assert final_measurement(steps, {"metrics": [("eval_loss", "MINIMIZE")], "selection": "LAST_MEASUREMENT"}) is None
