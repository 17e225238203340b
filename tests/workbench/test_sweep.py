"""`flant5 sweep`: space files that refuse with one line, and a real 2-trial sweep of the tiny model in which one trial
crashes (an unknown learning-rate schedule), the sweep goes on, a rerun skips what finished, and the test split is
scored once, for the chosen trial only."""

from __future__ import annotations

import json

import pytest

from flant5_lib.cli import main
from flant5_lib.errors import ParamsError
from flant5_lib.search_space import load_space, parse_space

from tests.helpers import REPO

SMOKE = REPO / "params" / "local-smoke.yaml"
SPACES = sorted((REPO / "params" / "sweeps").glob("*.yaml"))
# Few steps on few dialogues: a trial is a kernel start, a tiny model and a dozen of seconds of CPU.
SMALL = {"max_steps": 2, "max_train_samples": 32, "max_eval_samples": 8, "eval_rouge_samples": 4,
         "compare_untuned": False, "bootstrap_samples": 20, "save_every_minutes": None}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_space_files_validate_and_say_how_to_run_them(path):
    space = load_space(path)
    assert space.parameters
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("#") and "flant5 sweep" in header and str(path.relative_to(REPO)) in header
    assert {p.type for p in space.parameters.values()} == {"double", "integer", "discrete", "categorical"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("parameters: {}\n", "parameters: empty; add at least one"),
        ("algorithm: grid\n", "no 'parameters' section"),
        ("parameters:\n  learnin_rate: {type: double, min: 1.0e-4, max: 1.0e-2}\n",
         "parameters.learnin_rate: not a Params field (did you mean learning_rate?)"),
        ("parameters:\n  learning_rate: {type: double, min: 1.0e-2, max: 1.0e-4}\n",
         "parameters.learning_rate: min (0.01) must be below max (0.0001)"),
        ("parameters:\n  warmup_ratio: {type: double, min: 0.0, max: 0.2, scale: log}\n",
         "parameters.warmup_ratio: scale log needs min above 0"),
        ("parameters:\n  learning_rate: {type: double, min: 1.0e-4, max: 1.0e-2, scale: exp}\n",
         "parameters.learning_rate.scale: Input should be 'linear' or 'log'"),
        ("parameters:\n  num_beams: {type: integer, min: 1, max: 32}\n", "parameters.num_beams: 32: Input should be less"),
        ("parameters:\n  learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2}\n",
         "parameters.learning_rate: type must be double, integer, discrete or categorical"),
        ("parameters:\n  learning_rate: {type: double, min: 1.0e-4, max: 1.0e-2}\nalgorithm: grid\n",
         "algorithm grid: learning_rate is double; give it as discrete values"),
        ("parameters:\n  label_smoothing: {type: discrete, values: [0.0, 0.1]}\nmax_trails: 3\n", "max_trails: unknown key"),
        ("parameters: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_space_files_fail_in_one_line_with_exit_2(tmp_path, capsys, text, expected):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    assert main(["sweep", "--params", str(SMOKE), "--space", str(space), "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "space.yaml" in err, err
    assert not (tmp_path / "sweep").exists()  # nothing ran, nothing written


def test_missing_space_file_and_values_the_base_params_refuse(tmp_path, capsys):
    assert main(["sweep", "--params", str(SMOKE), "--space", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: space file not found" in capsys.readouterr().err
    from flant5_lib.workbench.sweep import plan_sweep

    space = tmp_path / "s.yaml"
    space.write_text("parameters:\n  label_smoothing: {type: discrete, values: [0.0, 0.1]}\nmetric: rougeL\n")
    with pytest.raises(ParamsError, match="eval_strategy is 'no'"):
        plan_sweep(str(SMOKE), str(space), {"eval_strategy": "no"}, out=str(tmp_path / "sw"))


def test_grid_points_follow_the_file_order():
    space = parse_space({"parameters": {"num_train_epochs": {"type": "integer", "min": 1, "max": 2},
                                        "lr_scheduler_type": {"type": "categorical", "values": ["linear", "cosine"]}},
                         "algorithm": "grid", "max_trials": 9})
    assert space.grid_points() == [
        {"num_train_epochs": 1, "lr_scheduler_type": "linear"}, {"num_train_epochs": 1, "lr_scheduler_type": "cosine"},
        {"num_train_epochs": 2, "lr_scheduler_type": "linear"}, {"num_train_epochs": 2, "lr_scheduler_type": "cosine"}]


def test_max_minutes_stops_before_a_trial_starts(tmp_path):
    """The sweep's own clock is the test's: it reads 0 at the start, then an hour later. No trial may start."""
    from flant5_lib.workbench.sweep import plan_sweep, run_sweep

    space = tmp_path / "s.yaml"
    space.write_text("parameters:\n  learning_rate: {type: double, min: 1.0e-3, max: 1.0e-2, scale: log}\n"
                     "max_trials: 3\nmax_minutes: 5\n")
    plan = plan_sweep(str(SMOKE), str(space), dict(SMALL), out=str(tmp_path / "sw"), notebooks_dir=str(REPO / "notebooks"))
    ticks = iter([0.0] + [3600.0] * 10)
    result = run_sweep(plan, clock=lambda: next(ticks))
    assert result["trials"] == [] and result["best"] is None
    assert "max_minutes 5 reached" in result["stop_reason"]
    assert not list((tmp_path / "sw").glob("trial-*"))
    assert "No trial finished" in (tmp_path / "sw" / "sweep.html").read_text()


@pytest.mark.slow
def test_a_crashing_trial_does_not_kill_the_sweep_and_a_rerun_skips_finished_trials(tmp_path):
    from flant5_lib.workbench.sweep import plan_sweep, run_sweep

    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  lr_scheduler_type: {type: categorical, values: [linear, no_such_schedule]}\n"
                     "algorithm: grid\nmetric: rougeL\nmax_trials: 2\n")
    sweep_dir = tmp_path / "sweep"
    plan = plan_sweep(str(SMOKE), str(space), dict(SMALL), out=str(sweep_dir), notebooks_dir=str(REPO / "notebooks"))
    result = run_sweep(plan, test=True)

    ok, crashed = result["trials"]
    assert (ok["name"], ok["status"], crashed["name"], crashed["status"]) == ("trial-000", "ok", "trial-001", "failed")
    assert "no_such_schedule is not a valid SchedulerType" in crashed["error"] and crashed["value"] is None
    # the trial's value is its published checkpoint's validation score, as the trainer wrote it
    train = json.loads((sweep_dir / "trial-000" / "model" / "train_metrics.json").read_text())
    assert train["selection_split"] == "validation" and ok["value"] == train["eval_rougeL"]
    # each trial is an ordinary run folder of the same Params plus its hyperparameter
    params = __import__("yaml").safe_load((sweep_dir / "trial-001" / "params.yaml").read_text())
    assert params["lr_scheduler_type"] == "no_such_schedule" and params["max_steps"] == 2
    assert params["metric_for_best_model"] == "rougeL" and params["run_dir"] == str(sweep_dir / "trial-001")
    # the test split was scored once, for the chosen trial only
    assert result["best"] == "trial-000" and [h["trial"] for h in result["test_history"]] == ["trial-000"]
    test_metrics = json.loads((sweep_dir / "trial-000" / "eval" / "finetuned" / "metrics.json").read_text())
    assert test_metrics["split"] == "test" and result["test_history"][0]["rougeL"] == test_metrics["rougeL"]
    assert not (sweep_dir / "trial-001" / "eval").exists()
    page = (sweep_dir / "sweep.html").read_text()
    assert "scored <b>once</b>, for the chosen trial <b>trial-000</b> only" in page and "no_such_schedule" in page
    assert (sweep_dir / "sweep_metric.png").stat().st_size > 0

    # Rerun: trial-000 finished and is skipped untouched; trial-001 is marked interrupted and must run again with
    # the very same hyperparameters; the test split is not scored again.
    before = (sweep_dir / "trial-000" / "run.json").read_text()
    record = json.loads((sweep_dir / "trial-001" / "trial.json").read_text())
    (sweep_dir / "trial-001" / "trial.json").write_text(json.dumps({**record, "status": "running", "error": None}))
    lines: list[str] = []
    again = run_sweep(plan_sweep(str(SMOKE), str(space), dict(SMALL), out=str(sweep_dir),
                                 notebooks_dir=str(REPO / "notebooks")), test=True, echo=lines.append)
    assert any(line.startswith("trial-000: ok earlier") and line.endswith("skipped") for line in lines)
    assert (sweep_dir / "trial-000" / "run.json").read_text() == before
    rerun = again["trials"][1]
    assert rerun["params"] == record["params"] and rerun["status"] == "failed" and rerun["started_at"] >= record["finished_at"]
    assert len(again["test_history"]) == 1

    # Another space in the same folder would mix incomparable trials: refused in one line.
    space.write_text("parameters:\n  lr_scheduler_type: {type: categorical, values: [linear, cosine]}\nalgorithm: grid\n"
                     "metric: rougeL\nmax_trials: 2\n")
    with pytest.raises(Exception, match="another space or other base params"):
        plan_sweep(str(SMOKE), str(space), dict(SMALL), out=str(sweep_dir))
