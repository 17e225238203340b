"""Training: it learns, resumes from complete checkpoints, refuses bad input in one line, LoRA exports load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.train import setup as train_setup
from flant5_lib.errors import ModelError, ParamsError
from flant5_lib.train.loop import main, train
from tests.helpers.train import small_params, write_params

pytestmark = pytest.mark.timeout(300)


def _logged_losses(log_history: list[dict]) -> list[float]:
    return [e["loss"] for e in log_history if "loss" in e]


@pytest.mark.slow
def test_training_lowers_loss_and_beats_untrained_rouge(tmp_path: Path, tiny_model_dir: Path) -> None:
    from flant5_lib.data import load_from_params
    from flant5_lib.inference import generate_summaries
    from flant5_lib.metrics import compute_rouge
    from flant5_lib.modeling import load_model_and_tokenizer

    # 320 training dialogues x 3 epochs at lr 3e-3: ~120 steps, about 10 s on 2 idle cores.
    params = small_params(tmp_path / "run", tiny_model_dir, dataset="synthetic:400", num_train_epochs=3,
                          logging_steps=10, save_steps=1000, eval_strategy="epoch", max_eval_samples=40, max_new_tokens=48,
                          eval_rouge_samples=0, metric_for_best_model="eval_loss")  # ROUGE: test_train_selection
    result = train(params)

    losses = _logged_losses(result.log_history)
    assert losses[-1] < 0.5 * losses[0], losses
    out = result.model_dir
    assert out == (tmp_path / "run" / "model").resolve()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "flant5_params.yaml",
                 "train_metrics.json", "log_history.json", "eval_history.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["global_step"] == 120 and metrics["eval_loss"] < losses[0]
    assert 0 < metrics["padding_fraction"] < 0.5 and metrics["train_samples_per_second"] > 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"

    val = load_from_params(params, "validation")
    scores = {}
    for name, path in (("before", tiny_model_dir), ("after", out)):
        model, tok = load_model_and_tokenizer(str(path), device="cpu")
        preds = generate_summaries(model, tok, val["dialogue"], params, progress=False)
        scores[name] = compute_rouge(preds, val["summary"])["rougeL"]
    assert scores["after"] > scores["before"] + 10, scores


def test_resume_continues_from_newest_complete_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = train(small_params(tmp_path / "run", tiny_model_dir, max_steps=10, logging_steps=1))
    assert first.metrics["global_step"] == 10
    ckpts = tmp_path / "run" / "checkpoints"
    assert [s for s, _ in train_ckpt.list_checkpoints(ckpts)] == [5, 10]
    # A folder a kill left half-written (no marker) must be ignored and cleaned, not resumed from.
    broken = ckpts / "checkpoint-12"
    shutil.copytree(ckpts / "checkpoint-10", broken)
    (broken / train_ckpt.MARKER).unlink()
    # A marker whose files do not match (truncated weights) is incomplete too.
    truncated = ckpts / "checkpoint-11"
    shutil.copytree(ckpts / "checkpoint-10", truncated)
    (truncated / "model.safetensors").write_bytes(b"cut")

    second = train(small_params(tmp_path / "run", tiny_model_dir, max_steps=15, logging_steps=1))
    assert second.metrics["resumed_from"] == str(ckpts / "checkpoint-10")
    assert second.metrics["global_step"] == 15
    steps = [e["step"] for e in second.log_history if "loss" in e]
    assert steps == list(range(1, 16))  # history carried over, then continued
    # train_loss covers the whole run (every step's loss is logged here), not only the 5 steps after the resume.
    whole = sum(e["loss"] for e in second.log_history if "loss" in e) / 15
    assert second.metrics["train_loss"] == pytest.approx(whole, rel=1e-3)
    assert second.metrics["train_loss_this_session"] != pytest.approx(whole, rel=1e-2)
    assert not broken.exists() and not truncated.exists()
    assert [s for s, _ in train_ckpt.list_checkpoints(ckpts)] == [10, 15]  # save_total_limit=2
    assert all(train_ckpt.is_complete(f) for _, f in train_ckpt.list_checkpoints(ckpts))


def test_resume_never_starts_over(tmp_path: Path, tiny_model_dir: Path) -> None:
    train(small_params(tmp_path / "run", tiny_model_dir, max_steps=10))
    again = train(small_params(tmp_path / "run", tiny_model_dir, max_steps=3, resume="never", save_steps=100))
    assert again.metrics["resumed_from"] is None and again.metrics["global_step"] == 3
    # The old run's checkpoints are gone; only this run's final one remains.
    assert [s for s, _ in train_ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [3]


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("flant5 train: error:")]  # progress bars may precede it
    assert len(lines) == 1, err
    return lines[0]


def test_bad_inputs_fail_at_start_with_one_line(tmp_path: Path, tiny_model_dir: Path, capsys, monkeypatch) -> None:
    pfile = write_params(tmp_path / "p.yaml", small_params(tmp_path / "run", tiny_model_dir, max_steps=2))
    assert "fp16" in _one_line_error(capsys, ["--params", str(pfile), "--set", "precision=fp16"])
    assert "no_such_key" in _one_line_error(capsys, ["--params", str(pfile), "--set", "no_such_key=1"])
    assert "learning_rate" in _one_line_error(capsys, ["--params", str(pfile), "--set", "learning_rate=fast"])
    assert "fsdp" in _one_line_error(capsys, ["--params", str(pfile), "--set", "distributed=fsdp"])
    err = _one_line_error(capsys, ["--params", str(pfile), "--set", "lora=true", "--set", "lora_target_modules=[query,v]"])
    assert "query" in err and "wi_0" in err  # names the bad module and the ones that exist
    # No CPU without bf16 kernels is at hand: stand in torch's answer (the only mock here).
    monkeypatch.setattr(train_setup, "cpu_supports_bf16", lambda: False)
    assert "bf16" in _one_line_error(capsys, ["--params", str(pfile), "--set", "precision=bf16"])
    assert not (tmp_path / "run" / "model").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    train(small_params(tmp_path / "run", tiny_model_dir, max_steps=5))
    marker = tmp_path / "run" / "checkpoints" / "checkpoint-5" / train_ckpt.MARKER
    data = json.loads(marker.read_text())
    data["fingerprint"]["d_model"] = 512  # as if written by a bigger model
    marker.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="another model.*d_model 512"):
        train(small_params(tmp_path / "run", tiny_model_dir, max_steps=10))


def test_bf16_on_a_cpu_that_has_it_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    if not train_setup.cpu_supports_bf16():
        with pytest.raises(ParamsError, match="bf16"):
            train(small_params(tmp_path / "run", tiny_model_dir, max_steps=2, precision="bf16"))
        return
    result = train(small_params(tmp_path / "run", tiny_model_dir, max_steps=3, precision="bf16", save_steps=100))
    assert result.metrics["device"].startswith("cpu, bf16")


def test_lora_adapter_export_loads_through_modeling(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    from flant5_lib.modeling import load_model_and_tokenizer

    result = train(small_params(tmp_path / "run", tiny_model_dir, max_steps=8, lora=True, lora_export="adapter",
                                lora_target_modules=["q", "v"], learning_rate=1e-2))
    out = result.model_dir
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "config.json").exists() and (out / "tokenizer.json").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())

    tuned, tok = load_model_and_tokenizer(str(out), device="cpu")
    base, _ = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    q_tuned = tuned.encoder.block[0].layer[0].SelfAttention.q.weight
    q_base = base.encoder.block[0].layer[0].SelfAttention.q.weight
    assert not torch.allclose(q_tuned, q_base)  # the adapter was applied (merged on load)
    k_tuned = tuned.encoder.block[0].layer[0].SelfAttention.k.weight
    assert torch.equal(k_tuned, base.encoder.block[0].layer[0].SelfAttention.k.weight)  # k had no adapter
    assert len(tok) == len(load_model_and_tokenizer(str(tiny_model_dir), device="cpu")[1])


def test_lora_merged_export_is_a_plain_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = train(small_params(tmp_path / "run", tiny_model_dir, max_steps=4, lora=True, save_steps=100))
    assert (result.model_dir / "config.json").is_file() and not (result.model_dir / "adapter_config.json").exists()
    from flant5_lib.modeling import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(result.model_dir), device="cpu")
    assert not any("lora" in n for n, _ in model.named_parameters())
