"""Guards: the first non-finite loss or gradient norm stops the run in one line with no checkpoint from that state;
checkpoints are also written every `save_every_minutes`, so a Spot preemption loses a bounded amount of work."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.train.loop import train
from flant5_lib.train.trainer import NonFiniteError
from tests.helpers.train import REPO, child_env, small_params, write_params

pytestmark = pytest.mark.timeout(300)


def _callback(**hooks):
    from transformers import TrainerCallback

    return type("Injected", (TrainerCallback,), hooks)()


def _all_finite(folder: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(str(folder / "model.safetensors")).values())


def test_nan_loss_stops_before_the_update_and_writes_no_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 7:  # step 8 is computed with NaN weights: its loss is NaN
            with torch.no_grad():
                model.shared.weight.fill_(float("nan"))

    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as err:
        train(small_params(run, tiny_model_dir, max_steps=20, save_steps=3, save_total_limit=5, save_every_minutes=None),
              callbacks=[_callback(on_step_begin=on_step_begin)])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("step 8: loss is nan (fp32, 1 process)"), msg
    assert "checkpoint-6" in msg and "learning_rate" in msg
    steps = [s for s, _ in train_ckpt.list_checkpoints(run / "checkpoints")]
    assert steps == [3, 6], steps  # nothing saved from the poisoned state, the good ones kept
    assert all(_all_finite(f) for _, f in train_ckpt.list_checkpoints(run / "checkpoints"))
    assert not (run / "model").exists()


def test_inf_gradient_norm_stops_without_clipping_too(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    handles = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 4 and not handles:  # step 5: finite loss, infinite gradient on one weight
            handles.append(model.lm_head.weight.register_hook(lambda g: torch.full_like(g, math.inf)))

    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"^step 5: gradient norm is inf \(fp32, 1 process\)"):
        train(small_params(run, tiny_model_dir, max_steps=20, save_steps=2, max_grad_norm=0, save_every_minutes=None),
              callbacks=[_callback(on_step_begin=on_step_begin)])
    assert [s for s, _ in train_ckpt.list_checkpoints(run / "checkpoints")] == [2, 4]
    assert all(_all_finite(f) for _, f in train_ckpt.list_checkpoints(run / "checkpoints"))


@pytest.mark.slow
def test_diverging_run_exits_with_one_line_from_the_command(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A learning rate no AdamW survives: the weights overflow on the first update, nothing is injected.
    pfile = write_params(tmp_path / "p.yaml", small_params(tmp_path / "run", tiny_model_dir, max_steps=20,
                                                           learning_rate=1e30, save_steps=100))
    proc = subprocess.run([sys.executable, "-m", "flant5_lib.train", "--params", str(pfile)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "flant5 train: error:" in ln]
    assert len(lines) == 1 and ("is nan" in lines[0] or "is inf" in lines[0]), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "model").exists()


class _StepClock:
    """The trainer module's `time`, with a monotonic clock that moves only when the test says a step took time:
    which steps save is then fixed by the rule alone, whatever the machine's speed (real time for everything else)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_checkpoints_follow_the_wall_clock_with_slow_steps(tmp_path: Path, tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from flant5_lib.train import trainer as trainer_module

    clock, step_s, every_s = _StepClock(), 0.25, 1.0  # binary fractions: the sums are exact
    monkeypatch.setattr(trainer_module, "time", clock)
    saved: list[int] = []

    def on_step_begin(self, args, state, control, **kwargs):
        clock.now += step_s  # a slow step, as on a big model

    def on_save(self, args, state, control, **kwargs):
        saved.append(state.global_step)

    run = tmp_path / "run"
    result = train(small_params(run, tiny_model_dir, max_steps=12, save_steps=1000, save_total_limit=20,
                                save_every_minutes=every_s / 60, logging_steps=100),
                   callbacks=[_callback(on_step_begin=on_step_begin, on_save=on_save)])
    assert result.metrics["global_step"] == 12
    # No step-based save is due before step 1000, so every save before the end comes from the clock: 4 steps of
    # 0.25 s make the 1 s period, counted from the start and then from each save. Step 12 is the end-of-training save.
    timed = [s for s in saved if s < 12]
    assert timed == [4, 8], saved
    steps = timed
    assert [st for st, _ in train_ckpt.list_checkpoints(run / "checkpoints")] == steps + [12]
