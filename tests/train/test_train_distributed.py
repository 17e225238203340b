"""torchrun: 2 CPU processes on gloo (2 x 4 dialogues) and 1 process accumulating 2 x 4 follow the same loss
trajectory as 1 process x 8, label smoothing included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flant5_lib.train.trainer import EpochLengthGroupedSampler
from tests.helpers.train import REPO, VENV_BIN, child_env, small_params, write_params
from flant5_lib.procs import free_port


def test_length_grouped_order_depends_on_seed_and_epoch_only() -> None:
    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    a = EpochLengthGroupedSampler(lengths, global_batch=8, seed=3)
    b = EpochLengthGroupedSampler(lengths, global_batch=8, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(200))
    b.set_epoch(1)
    assert list(a) != list(b)  # a new order each epoch, the same one again after a restart
    # Consecutive batches hold similar lengths: far less padding than the random order.
    from flant5_lib.preprocess import padding_fraction

    grouped = padding_fraction([lengths[i] for i in a], 8)
    plain = padding_fraction(lengths, 8)
    assert grouped < plain / 2, (grouped, plain)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_processes_match_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Both runs read the same model folder (the tiny tokenizer is trained, so rebuilding it could differ).
    params = small_params(tmp_path / "unused", tiny_model_dir, dataset="synthetic:200", max_steps=12, logging_steps=1,
                          save_steps=100, label_smoothing=0.1)
    pfile = write_params(tmp_path / "p.yaml", params)
    env = child_env()
    two = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "flant5_lib.train",
         "--params", str(pfile), "--set", f"run_dir={tmp_path / 'two'}", "--set", "per_device_train_batch_size=4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "flant5_lib.train", "--params", str(pfile), "--set", f"run_dir={tmp_path / 'one'}",
         "--set", "per_device_train_batch_size=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    accum = subprocess.run(
        [sys.executable, "-m", "flant5_lib.train", "--params", str(pfile), "--set", f"run_dir={tmp_path / 'accum'}",
         "--set", "per_device_train_batch_size=4", "--set", "gradient_accumulation_steps=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert accum.returncode == 0, accum.stderr[-3000:]

    def losses(run: str) -> list[float]:
        hist = json.loads((tmp_path / run / "model" / "log_history.json").read_text())
        return [e["loss"] for e in hist if "loss" in e]

    def metrics(run: str) -> dict:
        return json.loads((tmp_path / run / "model" / "train_metrics.json").read_text())

    assert metrics("two")["world_size"] == 2 and metrics("one")["world_size"] == 1
    assert metrics("two")["real_tokens"] == metrics("one")["real_tokens"]  # the very same dialogues were seen
    assert metrics("accum")["real_tokens"] == metrics("one")["real_tokens"] and metrics("one")["label_smoothing"] == 0.1
    l1, l2, la = losses("one"), losses("two"), losses("accum")
    assert len(l1) == len(l2) == len(la) == 12
    assert l1[-1] < 0.7 * l1[0]  # learning (smoothing keeps a floor under the loss)
    for a, b, c in zip(l1, l2, la):
        assert b == pytest.approx(a, rel=2e-3), (l1, l2)
        assert c == pytest.approx(a, rel=2e-3), (l1, la)
