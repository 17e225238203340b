"""Loss options (label smoothing, exact under accumulation) and `--set` values read against the field's type."""

from __future__ import annotations

import pytest

from flant5_lib.config import load_params, parse_set
from flant5_lib.train.trainer import token_mean_loss


def _batch(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 6, 11, generator=g) * 3
    labels = torch.randint(0, 11, (4, 6), generator=g)
    labels[0, 4:] = -100  # padding of shorter summaries
    labels[2, 1:] = -100
    return logits, labels


def test_label_smoothing_is_the_textbook_mix_over_real_tokens() -> None:
    import torch

    logits, labels = _batch()
    eps = 0.1
    n = int((labels != -100).sum())
    logp = torch.log_softmax(logits, -1)
    real = labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    uniform = -logp.mean(-1)  # cross-entropy against the uniform distribution over the vocabulary
    expected = (((1 - eps) * nll + eps * uniform)[real]).sum() / n

    got = token_mean_loss({"logits": logits}, labels, n, label_smoothing=eps)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    plain = token_mean_loss({"logits": logits}, labels, n)
    assert float(plain) == pytest.approx(float(nll[real].mean()), rel=1e-5)
    assert float(got) > float(plain)  # smoothing pays for mass kept off the confident targets
    # Evaluation (no step token count) is the plain cross-entropy whatever the training smoothing.
    assert float(token_mean_loss({"logits": logits}, labels, None, label_smoothing=eps)) == pytest.approx(float(plain))


def test_smoothed_loss_is_the_same_split_over_micro_batches() -> None:
    """2 micro-batches (gradient accumulation, or 2 processes) sum to the loss of the whole batch."""
    logits, labels = _batch(1)
    n = (labels != -100).sum()
    whole = token_mean_loss({"logits": logits}, labels, n, label_smoothing=0.2)
    halves = sum(token_mean_loss({"logits": logits[i : i + 2]}, labels[i : i + 2], n, label_smoothing=0.2) for i in (0, 2))
    assert float(halves) == pytest.approx(float(whole), rel=1e-6)


def test_set_values_are_read_against_the_field_type() -> None:
    values = parse_set(["eval_strategy=no", "run_dir=2024", "lora=true", "eval_steps=null", "source_prefix=yes",
                        "lora_target_modules=[q,v]", "label_smoothing=0.1", "max_grad_norm=0"])
    assert values["eval_strategy"] == "no" and values["run_dir"] == "2024" and values["source_prefix"] == "yes"
    assert values["lora"] is True and values["eval_steps"] is None and values["lora_target_modules"] == ["q", "v"]
    params = load_params(None, values)
    assert params.eval_strategy == "no" and params.label_smoothing == 0.1 and params.max_grad_norm == 0
    # A value that fits neither way still fails on the field, in one line.
    from flant5_lib.errors import ParamsError

    with pytest.raises(ParamsError, match="eval_strategy"):
        load_params(None, parse_set(["eval_strategy=sometimes"]))


def test_train_help_says_what_it_does_with_an_example() -> None:
    import subprocess
    import sys

    from tests.helpers import REPO

    out = subprocess.run([sys.executable, "-m", "flant5_lib", "train", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fine-tune" in out.stdout.lower() and "flant5 train --params params/" in out.stdout
