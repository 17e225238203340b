"""The notebooks' final checks: each verifies what its notebook handed to the next through the run folder.

A notebook that ran without an exception can still have produced nothing useful (an empty summary for every
dialogue, a metric outside its range, a plot that was never written). Each `check_*` reads the files back, collects
every problem and raises one `CheckError` naming them, so `flant5 run` and nbval fail on the notebook that went wrong
rather than on a later one. Each returns a one-line summary of what it checked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CheckError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
EXPLORE_PLOTS = ("turns.png", "speakers.png", "lengths_words.png", "buckets.png")
TRAINED_FILES = ("flant5_params.yaml", "tokenizer_config.json", "loss_curve.png")  # besides config.json and weights


class _Problems:
    """Collects problems; `raise_if_any` turns them into one CheckError."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.found: list[str] = []

    def add(self, problem: str) -> None:
        self.found.append(problem)

    def file(self, path: Path) -> bool:
        """True when `path` is a non-empty file; a problem otherwise."""
        if path.is_file() and path.stat().st_size > 0:
            return True
        self.add(f"{path}: {'empty' if path.is_file() else 'not written'}")
        return False

    def json(self, path: Path) -> Any:
        if not self.file(path):
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            self.add(f"{path}: not valid JSON ({err})")
            return None

    def summaries(self, where: str, texts: Sequence[Any]) -> None:
        """Summaries must be strings, and mostly non-empty: an empty one for every dialogue is the classic sign of a
        broken model or pipeline (an untrained T5 echoes its start token); a few empty ones are a weak model's right."""
        if not texts:
            self.add(f"{where}: no predictions")
            return
        if not all(isinstance(t, str) for t in texts):
            self.add(f"{where}: predictions are not all strings")
            return
        empty = sum(1 for t in texts if not t.strip())
        if 2 * empty > len(texts):
            self.add(f"{where}: {empty} of {len(texts)} predictions are empty")

    def raise_if_any(self, summary: str) -> str:
        if self.found:
            raise CheckError(f"{self.what}: " + "; ".join(self.found))
        return f"{self.what} ok: {summary}"


def _run(params: Params | str | os.PathLike[str]) -> Path:
    return Path(params.run_dir if isinstance(params, Params) else params)


def check_explore(params: Params | str | os.PathLike[str]) -> str:
    """00: stats.json with every split counted and bucketed, suggested lengths, and the plots."""
    out = _run(params) / "explore"
    p = _Problems("00 check")
    stats = p.json(out / "stats.json") or {}
    splits = stats.get("splits") or {}
    if stats and not splits:
        p.add(f"{out / 'stats.json'}: no splits")
    for name, split in splits.items():
        n = split.get("n", 0)
        if n <= 0:
            p.add(f"split {name}: {n} dialogues")
        elif sum((split.get("buckets") or {}).values()) != n:
            p.add(f"split {name}: size buckets hold {sum((split.get('buckets') or {}).values())} of {n} dialogues")
    plots = list(EXPLORE_PLOTS)
    if "suggested" in stats:
        plots.append("lengths_tokens.png")
        for key in ("max_source_length", "max_target_length"):
            if not stats["suggested"].get(key, 0) > 0:
                p.add(f"suggested {key}: {stats['suggested'].get(key)!r}")
    for name in plots:
        p.file(out / name)
    total = sum(s.get("n", 0) for s in splits.values())
    return p.raise_if_any(f"{len(splits)} split(s), {total} dialogues, {len(plots)} plots")


def _model_folder(p: _Problems, folder: Path) -> None:
    if not p.file(folder / "config.json"):
        return
    if not any(folder.glob("*.safetensors")) and not (folder / "adapter_model.safetensors").is_file():
        p.add(f"{folder}: no *.safetensors weights")
    pickles = sorted(x.name for x in folder.glob("*.bin"))
    if pickles:
        p.add(f"{folder}: pickle weights {pickles} (safetensors only)")


def check_training(model_dir: str | os.PathLike[str]) -> str:
    """01: the saved model (safetensors, tokenizer, its preprocessing, loss curve) and a finite training loss."""
    folder = Path(model_dir)
    p = _Problems("01 check")
    _model_folder(p, folder)
    for name in TRAINED_FILES:
        p.file(folder / name)
    metrics = p.json(folder / "train_metrics.json")
    loss, steps = (metrics or {}).get("train_loss"), (metrics or {}).get("global_step", 0)
    if metrics is not None:
        if not (isinstance(loss, (int, float)) and math.isfinite(loss) and loss >= 0):
            p.add(f"train_loss: {loss!r}")
        if not steps > 0:
            p.add(f"global_step: {steps!r} (nothing was trained)")
    return p.raise_if_any(f"model in {folder}, {steps} steps, train_loss {loss}")


def check_vertex_training(params: Params | str | os.PathLike[str]) -> str:
    """02: the job succeeded, its record names its output, and its model was fetched into <run_dir>/vertex/model."""
    run = _run(params)
    p = _Problems("02 check")
    job = p.json(run / "vertex" / "training_job.json") or {}
    if job and not str(job.get("state", "")).endswith("_SUCCEEDED"):
        p.add(f"training job {job.get('resource_name')}: state {job.get('state')}")
    if job and not str(job.get("model_artifact_uri", "")).startswith("gs://"):
        p.add(f"training job: model_artifact_uri {job.get('model_artifact_uri')!r} is not a gs:// folder")
    _model_folder(p, run / "vertex" / "model")
    return p.raise_if_any(f"{job.get('resource_name')} {job.get('state')}, model in {run / 'vertex' / 'model'}")


def check_evaluation(params: Params) -> str:
    """03: every system scored (fine-tuned, baselines, untuned when asked), ROUGE in range, one row per test
    dialogue, summaries not empty."""
    run = _run(params)
    p = _Problems("03 check")
    systems = (p.json(run / "metrics.json") or {}).get("systems") or {}
    wanted = ["finetuned", *params.baselines, *(["untuned"] if params.compare_untuned else [])]
    missing = [s for s in wanted if s not in systems]
    if missing:
        p.add(f"{run / 'metrics.json'}: no scores for {', '.join(missing)}")
    for name in [s for s in wanted if s in systems]:
        m = systems[name]
        for key in ROUGE_KEYS:
            value, ci = m.get(key), (m.get("ci") or {}).get(key)
            if not (isinstance(value, (int, float)) and 0 <= value <= 100):
                p.add(f"{name} {key}: {value!r} (F1 x 100 lies in 0-100)")
            elif ci is not None and not 0 <= ci[0] <= ci[1] <= 100:
                p.add(f"{name} {key}: 95% interval {ci}")
        path = run / "eval" / name / "predictions.jsonl"
        if p.file(path):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(rows) != m.get("n"):
                p.add(f"{path}: {len(rows)} rows, but {name} was scored on n={m.get('n')}")
            if name == "finetuned":  # the run's own model (an untuned base model may well say nothing)
                p.summaries(f"{name} ({path})", [r.get("prediction") for r in rows])
    finetuned = systems.get("finetuned", {})
    return p.raise_if_any(f"{len(systems)} systems on {finetuned.get('n')} dialogues, fine-tuned ROUGE-L "
                          f"{finetuned.get('rougeL', float('nan')):.1f}")


def check_deployment(params: Params, predictions: Sequence[Any]) -> str:
    """04: the model and endpoint records, the traffic on the new model, and the endpoint's answers."""
    run = _run(params)
    p = _Problems("04 check")
    model = p.json(run / "vertex" / "model.json") or {}
    endpoint = p.json(run / "vertex" / "endpoint.json") or {}
    if model and not model.get("resource_name"):
        p.add(f"{run / 'vertex' / 'model.json'}: no resource_name")
    if endpoint:
        if endpoint.get("model") != model.get("resource_name"):
            p.add(f"endpoint serves {endpoint.get('model')!r}, not the uploaded {model.get('resource_name')!r}")
        if sum((endpoint.get("traffic_split") or {}).values()) != 100:
            p.add(f"endpoint traffic_split {endpoint.get('traffic_split')} does not add up to 100")
    p.summaries("endpoint predictions", list(predictions))
    return p.raise_if_any(f"{endpoint.get('resource_name')} serves {model.get('resource_name')}")


def check_online_predictions(params: Params) -> str:
    """05: the REST request and response written, 200, one summary per dialogue sent, summaries not empty."""
    run = _run(params)
    p = _Problems("05 check")
    request = p.json(run / "vertex" / "predict_request.json") or {}
    response = p.json(run / "vertex" / "predict_response.json") or {}
    sent = len((request.get("body") or {}).get("instances") or [])
    body = response.get("body")
    got = (body.get("predictions") or []) if isinstance(body, dict) else []
    if response and response.get("status") != 200:
        p.add(f"REST predict answered {response.get('status')}")
    elif request and len(got) != sent:
        p.add(f"{sent} dialogues sent, {len(got)} predictions back")
    if response.get("status") == 200:
        p.summaries("REST predictions", got)
    return p.raise_if_any(f"{sent} dialogues in, {len(got)} summaries out")
