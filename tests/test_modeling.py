"""Tiny models build offline in the HF layout; only safetensors are loaded; bad folders are named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from flant5_lib.config import Params
from flant5_lib.errors import ModelError
from flant5_lib.inference import generate_summaries, length_sorted_batches
from flant5_lib.modeling import load_model_and_tokenizer, resolve_model_path


def test_tiny_model_is_a_flan_t5_family_checkpoint(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "t5" and cfg["feed_forward_proj"] == "gated-gelu"
    # v1.1 marker: transformers 5 records "no decoder output scaling" instead of untied embeddings
    assert cfg.get("scale_decoder_outputs") is False or cfg.get("tie_word_embeddings") is False
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    from safetensors.torch import load_file

    weights = load_file(str(tiny_model_dir / "model.safetensors"))  # Flan-T5's own output layer, as on the hub
    assert weights["lm_head.weight"].shape == weights["shared.weight"].shape
    assert not torch.equal(weights["lm_head.weight"], weights["shared.weight"])


def _first_loss(model_dir) -> tuple[float, float]:
    """(loss of the untrained model on a batch of synthetic dialogues, ln(vocab size))."""
    import math

    from flant5_lib.preprocess import make_collator, make_train_features
    from flant5_lib.synthetic import generate_records

    model, tok = load_model_and_tokenizer(str(model_dir), device="cpu")
    rows = generate_records(8, seed=1)
    p = Params(max_source_length=128, max_target_length=32)
    feats = make_train_features(tok, p)({"dialogue": [r["dialogue"] for r in rows], "summary": [r["summary"] for r in rows]})
    batch = make_collator(tok, model, p)([{k: feats[k][i] for k in feats} for i in range(len(rows))])
    with torch.no_grad():
        return model(**batch).loss.item(), math.log(model.config.vocab_size)


def test_tiny_init_starts_near_a_uniform_guess(tiny_model_dir):
    """transformers 5's default T5 init (tied, unscaled output layer) starts at loss ~71 here, 9x ln(vocab)."""
    loss, uniform = _first_loss(tiny_model_dir)
    assert 0.9 * uniform < loss < 1.5 * uniform, (loss, uniform)


@pytest.mark.slow
def test_base_arch_init_starts_near_a_uniform_guess(tmp_path, t5_tokenizer_dir):
    """flan-t5-base's shape (247.6M parameters with its own output layer); ~40 s to build on 2 cores."""
    from flant5_lib.modeling import build_tiny_model

    out = build_tiny_model(tmp_path / "base", tokenizer_dir=str(t5_tokenizer_dir), size="base-arch")
    loss, uniform = _first_loss(out)
    assert 0.9 * uniform < loss < 1.5 * uniform, (loss, uniform)


def test_init_tiny_cli_with_real_t5_vocabulary(tmp_path, t5_tokenizer_dir):
    out = tmp_path / "m"
    proc = subprocess.run(
        [sys.executable, "-m", "flant5_lib", "model", "init-tiny", "--out", str(out), "--tokenizer", str(t5_tokenizer_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    model, tok = load_model_and_tokenizer(str(out), device="cpu")
    assert len(tok) == 32100 and model.config.vocab_size >= 32100


def test_pickle_weights_are_refused(tmp_path, tiny_model_dir):
    import shutil

    bad = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").unlink()
    torch.save({}, bad / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only safetensors are loaded"):
        load_model_and_tokenizer(str(bad))


def test_bad_model_folders_are_named(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        load_model_and_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model_and_tokenizer(str(tmp_path))


def test_resolve_tiny_builds_once_into_the_run_folder(tmp_path):
    p = Params(model_name="tiny", run_dir=str(tmp_path / "run"))
    path = resolve_model_path(p)
    stamp = (tmp_path / "run" / "base-model" / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(p) == path
    assert (tmp_path / "run" / "base-model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_generation_keeps_input_order_across_length_sorted_batches(tiny_model_dir):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    dialogues = ["A: hi", "A: hello there\nB: how are you doing today my friend\nA: fine", "B: ok\nA: see you"]
    p = Params(max_new_tokens=6)
    batched = generate_summaries(model, tok, dialogues, p, batch_size=2, min_new_tokens=3, progress=False)
    single = [generate_summaries(model, tok, [d], p, batch_size=1, min_new_tokens=3, progress=False)[0] for d in dialogues]
    assert batched == single and all(batched)


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([3, 9, 1, 7, 5], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [1, 3]


def test_same_seed_builds_the_same_tiny_model(tmp_path):
    from flant5_lib.modeling import build_tiny_model

    a, b = build_tiny_model(tmp_path / "a", seed=3), build_tiny_model(tmp_path / "b", seed=3)
    for name in ("tokenizer.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
