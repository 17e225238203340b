"""Validation ROUGE during training, keep-the-best, early stopping, and the curves the run page plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.train.loop import train
from tests.helpers.train import small_params

pytestmark = pytest.mark.timeout(300)


def test_best_checkpoint_is_published_and_early_stopping_stops(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import TrainerCallback

    from flant5_lib.data import load_from_params
    from flant5_lib.inference import generate_summaries
    from flant5_lib.metrics import compute_rouge
    from flant5_lib.modeling import load_model_and_tokenizer

    initial = load_file(str(tiny_model_dir / "model.safetensors"))

    class ForgetAfterStep15(TrainerCallback):
        """From step 15 on the weights go back to the untrained ones: validation ROUGE collapses, so the best
        checkpoint is an earlier one and patience runs out. A real fault injected through the public hook."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step >= 15:
                model.load_state_dict(initial, strict=False)

    params = small_params(tmp_path / "run", tiny_model_dir, dataset="synthetic:200", eval_strategy="steps", eval_steps=5,
                          eval_rouge_samples=12, max_new_tokens=20, max_steps=60, save_steps=1000, save_total_limit=1,
                          early_stopping_patience=2, logging_steps=5, save_every_minutes=None)
    result = train(params, callbacks=[ForgetAfterStep15()])
    m = result.metrics
    history = json.loads((result.model_dir / "eval_history.json").read_text())

    # Early stopping: two evaluations without improvement after the best one, long before max_steps.
    assert m["early_stopped"] and m["global_step"] == m["best_step"] + 10 < 60, m
    assert [r["step"] for r in history] == list(range(5, m["global_step"] + 1, 5))
    assert set(history[0]) == {"step", "epoch", "eval_loss", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    best_row = max(history, key=lambda r: r["rougeLsum"])
    assert best_row["step"] == m["best_step"] == m["published_step"] <= 15
    assert m["selection_split"] == "validation" and m["metric_for_best_model"] == "eval_rougeLsum"
    assert m["eval_rougeLsum"] == best_row["rougeLsum"] > history[-1]["rougeLsum"] + 5

    # The best checkpoint survived rotation (save_total_limit=1) and is what was published, not the last state.
    ckpts = tmp_path / "run" / "checkpoints"
    assert [s for s, _ in train_ckpt.list_checkpoints(ckpts)] == [m["best_step"], m["global_step"]]
    published = load_file(str(result.model_dir / "model.safetensors"))
    best = load_file(str(ckpts / f"checkpoint-{m['best_step']}" / "model.safetensors"))
    last = load_file(str(ckpts / f"checkpoint-{m['global_step']}" / "model.safetensors"))
    assert all(torch.equal(published[k], best[k]) for k in best)
    assert not all(torch.equal(published[k], last[k]) for k in last)

    # The recorded score is the validation split's: the published model re-scored on the same 12 dialogues agrees.
    val = load_from_params(params, "validation").select(range(12))
    model, tok = load_model_and_tokenizer(str(result.model_dir), device="cpu")
    preds = generate_summaries(model, tok, val["dialogue"], params, progress=False)
    assert compute_rouge(preds, val["summary"])["rougeLsum"] == pytest.approx(best_row["rougeLsum"], abs=1e-3)

    # The same curve is in TensorBoard.
    (events,) = (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("eval/rougeLsum")]
    assert [s for s, _ in tb] == [r["step"] for r in history]
    assert [v for _, v in tb] == pytest.approx([r["rougeLsum"] for r in history], abs=1e-3)


def test_bad_selection_settings_fail_in_one_line() -> None:
    from flant5_lib.config import build_params
    from flant5_lib.errors import ParamsError

    with pytest.raises(ParamsError, match="metric_for_best_model.*eval_rouge_samples"):
        build_params({"eval_rouge_samples": 0})
    assert build_params({"eval_rouge_samples": 0, "metric_for_best_model": "eval_loss"}).eval_rouge_samples == 0
    with pytest.raises(ParamsError, match="early_stopping_patience.*eval_strategy"):
        build_params({"early_stopping_patience": 3, "eval_strategy": "no"})
