"""The notebooks' final checks pass on what the real steps write, and fail, naming the problem, on broken output.

00, 01 and 03 run the real steps on the tiny model and synthetic data; 02, 04 and 05 write their records with
`record`, as those notebooks do, with resource names standing in for a Vertex run (the stand-in chain is what
nbval and `flant5 run` exercise; these tests are about the checks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flant5_lib.config import Params
from flant5_lib.errors import CheckError
from flant5_lib.workbench import (check_deployment, check_evaluation, check_explore, check_online_predictions,
                                  check_training, check_vertex_training, record)
from tests.helpers.serve import make_talkative_model


def _params(run_dir: Path, model: Path, **kw) -> Params:
    return Params(run_dir=str(run_dir), dataset="synthetic:60", model_name=str(model), max_new_tokens=8,
                  bootstrap_samples=20, **kw)


def test_check_explore(tiny_model_dir: Path, tmp_path: Path) -> None:
    from flant5_lib import explore_dataset

    params = _params(tmp_path, tiny_model_dir)
    explore_dataset(params, out_dir=tmp_path / "explore")
    assert check_explore(params).startswith("00 check ok: 3 split(s), 60 dialogues")
    (tmp_path / "explore" / "buckets.png").unlink()
    stats = json.loads((tmp_path / "explore" / "stats.json").read_text())
    stats["splits"]["test"]["n"] = 0
    (tmp_path / "explore" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(CheckError, match=r"^00 check: .*split test: 0 dialogues; .*buckets.png: not written$"):
        check_explore(params)


def test_check_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    from flant5_lib.train import train

    result = train(_params(tmp_path / "run", tiny_model_dir, max_steps=2, per_device_train_batch_size=4,
                           eval_strategy="no", logging_steps=1))
    assert check_training(result.model_dir).startswith("01 check ok:")
    for name in ("model.safetensors", "loss_curve.png"):
        (Path(result.model_dir) / name).unlink()
    (Path(result.model_dir) / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckError) as err:
        check_training(result.model_dir)
    assert "no *.safetensors weights" in str(err.value) and "pickle weights ['pytorch_model.bin']" in str(err.value)
    assert "loss_curve.png: not written" in str(err.value)


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Path]:
    """A run folder as notebook 03 leaves it, with a model that does say something."""
    from flant5_lib import evaluate_model, run_baseline
    from flant5_lib.workbench import write_run_metrics

    run = tmp_path_factory.mktemp("evaluated")
    talk = make_talkative_model(tiny_model_dir, run / "talk")
    params = _params(run, tiny_model_dir)
    evaluate_model(params, talk, name="finetuned")
    for method in params.baselines:
        run_baseline(params, method)
    evaluate_model(params, tiny_model_dir, name="untuned")
    write_run_metrics(run)
    return params, run


def test_check_evaluation_passes_on_a_real_evaluation(evaluated: tuple[Params, Path]) -> None:
    params, _ = evaluated
    assert check_evaluation(params).startswith("03 check ok: 4 systems on ")


def test_check_evaluation_fails_on_empty_summaries_a_missing_system_and_a_score_out_of_range(
        evaluated: tuple[Params, Path], tmp_path: Path) -> None:
    params, run = evaluated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    broken = params.with_overrides(run_dir=str(copy))
    # what a broken model or pipeline leaves: an empty summary for every dialogue (the scores would be 0, not wrong)
    predictions = copy / "eval" / "finetuned" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    predictions.write_text("".join(json.dumps({**r, "prediction": ""}) + "\n" for r in rows))
    metrics = json.loads((copy / "metrics.json").read_text())
    del metrics["systems"]["lead3"]
    metrics["systems"]["longest3"]["rouge2"] = 120.0
    (copy / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(CheckError) as err:
        check_evaluation(broken)
    n = metrics["systems"]["finetuned"]["n"]
    assert f"finetuned ({predictions}): {n} of {n} predictions are empty" in str(err.value)
    assert "no scores for lead3" in str(err.value) and "longest3 rouge2: 120.0 (F1 x 100 lies in 0-100)" in str(err.value)


def test_check_vertex_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = Params(run_dir=str(tmp_path))
    job = {"resource_name": "projects/p/locations/r/trainingPipelines/1", "state": "PIPELINE_STATE_SUCCEEDED",
           "output_dir": "gs://b/runs/x", "model_artifact_uri": "gs://b/runs/x/model"}
    record(params, "training_job", job)
    shutil.copytree(tiny_model_dir, tmp_path / "vertex" / "model")  # as the job's model, fetched
    assert check_vertex_training(params).startswith("02 check ok: projects/p/locations/r/trainingPipelines/1")
    record(params, "training_job", {**job, "state": "PIPELINE_STATE_FAILED"})
    shutil.rmtree(tmp_path / "vertex" / "model")
    with pytest.raises(CheckError, match=r"state PIPELINE_STATE_FAILED; .*vertex/model/config.json: not written"):
        check_vertex_training(params)


def test_check_deployment(tmp_path: Path) -> None:
    params = Params(run_dir=str(tmp_path))
    model = "projects/p/locations/r/models/7"
    record(params, "model", {"resource_name": model, "artifact_uri": "gs://b/m"})
    record(params, "endpoint", {"resource_name": "projects/p/locations/r/endpoints/9", "model": model,
                                "traffic_split": {"1": 100}})
    assert check_deployment(params, ["Amy will come."]).startswith("04 check ok:")
    record(params, "endpoint", {"resource_name": "projects/p/locations/r/endpoints/9", "model": "models/other",
                                "traffic_split": {"1": 50}})
    with pytest.raises(CheckError) as err:
        check_deployment(params, [""])
    assert "not the uploaded" in str(err.value) and "does not add up to 100" in str(err.value)
    assert "endpoint predictions: 1 of 1 predictions are empty" in str(err.value)


def test_check_online_predictions(tmp_path: Path) -> None:
    params = Params(run_dir=str(tmp_path))
    request = {"url": "http://x/v1/e:predict", "body": {"instances": [{"dialogue": "A: hi"}, {"dialogue": "B: yo"}]}}
    record(params, "predict_request", request)
    record(params, "predict_response", {"status": 200, "body": {"predictions": ["A greets.", "B greets."]}})
    assert check_online_predictions(params) == "05 check ok: 2 dialogues in, 2 summaries out"
    record(params, "predict_response", {"status": 200, "body": {"predictions": ["", ""]}})
    with pytest.raises(CheckError, match="REST predictions: 2 of 2 predictions are empty"):
        check_online_predictions(params)
    record(params, "predict_response", {"status": 200, "body": {"predictions": ["A greets."]}})
    with pytest.raises(CheckError, match="2 dialogues sent, 1 predictions back"):
        check_online_predictions(params)
    record(params, "predict_response", {"status": 503, "body": {"error": "loading"}})
    with pytest.raises(CheckError, match="REST predict answered 503"):
        check_online_predictions(params)
