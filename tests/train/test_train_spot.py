"""Spot preemption in the trainer: the SIGTERM save is complete (marker uploaded last to AIP_CHECKPOINT_DIR in the
storage emulator) and timed; a checkpoint from other parameters or data is refused in one line and nothing is
overwritten; an AIP_CHECKPOINT_DIR that cannot be written is one line before any work."""

from __future__ import annotations

import logging
import os
import signal
import uuid
from pathlib import Path

import pytest

from flant5_lib.errors import ParamsError
from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.train.loop import finish, fit, main, prepare, train
from flant5_lib.train.preemption import SaveClock
from tests.helpers.train import small_params, write_params

pytestmark = pytest.mark.timeout(300)


def _sigterm_at(step: int):
    from transformers import TrainerCallback

    class SigtermAt(TrainerCallback):
        """What the preemption notice does: SIGTERM to the trainer's process, here at a known step."""

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return control

    return SigtermAt()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_sigterm_save_is_complete_in_gcs_timed_and_resumed_automatically(
        tmp_path: Path, tiny_model_dir: Path, gcs_emulator: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from flant5_lib import storage

    bucket = f"gs://spot-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(bucket)
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", f"{bucket}/job/checkpoints/")
    # no periodic save before step 1000: only the SIGTERM handler can write checkpoint-4
    params = small_params(tmp_path / "vm1", tiny_model_dir, max_steps=8, save_steps=1000, save_every_minutes=None)
    caplog.set_level(logging.INFO)
    prep = prepare(params, callbacks=[_sigterm_at(3)])
    output, wall = fit(prep)
    result = finish(prep, output, wall)
    assert result.interrupted and result.metrics["global_step"] == 4  # saved at the end of the step in flight
    (clock,) = [c for c in prep.trainer.callback_handler.callbacks if isinstance(c, SaveClock)]
    (row,) = clock.saves
    assert row["step"] == 4 and 0 < row["save_s"] <= row["since_sigterm_s"]
    assert any("SIGTERM save: checkpoint-4 complete" in r.getMessage() and "notice window 30 s" in r.getMessage()
               for r in caplog.records)
    remote = storage.list_blobs(f"{bucket}/job/checkpoints")
    assert "checkpoint-4/flant5_checkpoint.json" in remote and "checkpoint-4/model.safetensors" in remote

    # a restarted replica on a fresh VM: empty disk, same AIP_CHECKPOINT_DIR -> resumes on its own and says so
    caplog.clear()
    again = train(params.with_overrides(run_dir=str(tmp_path / "vm2")))
    assert again.metrics["global_step"] == 8
    assert again.metrics["resumed_from"].endswith("checkpoint-4")
    assert any("resuming automatically from" in r.getMessage() and "same parameters and training data" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize(("change", "field"), [({"learning_rate": 1e-3}, "learning_rate"),
                                               ({"weight_decay": 0.5}, "weight_decay"),
                                               ({"max_train_samples": 50}, "max_train_samples, dataset")])
def test_a_checkpoint_of_another_run_is_refused_in_one_line_and_left_untouched(
        tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], change: dict, field: str) -> None:
    run = tmp_path / "run"
    params = small_params(run, tiny_model_dir, max_steps=6, save_steps=3)
    train(params)
    before = _snapshot(run)
    other = write_params(tmp_path / "other.yaml", params.with_overrides(max_steps=9, **change))
    capsys.readouterr()
    assert main(["--params", str(other)]) == 2
    text = capsys.readouterr().err
    assert "Traceback" not in text
    (err,) = [line for line in text.splitlines() if "error" in line]  # the rest is the progress bars of loading
    assert err.startswith(f"flant5 train: error: {field}: the checkpoint checkpoint-6 in ")
    assert "belongs to another run" in err and "nothing was resumed or overwritten" in err
    assert _snapshot(run) == before  # model, checkpoints, metrics: every byte and timestamp as it was


def test_extending_a_run_is_not_another_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    params = small_params(tmp_path / "run", tiny_model_dir, max_steps=6, save_steps=3)
    train(params)
    longer = train(params.with_overrides(max_steps=9, logging_steps=1, save_every_minutes=None))
    assert longer.metrics["resumed_from"].endswith("checkpoint-6") and longer.metrics["global_step"] == 9


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_an_unwritable_checkpoint_dir_is_one_line_before_any_work(
        tmp_path: Path, tiny_model_dir: Path, gcs_emulator: str, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = str(blocker / "checkpoints") if where == "local" else f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/ckpt/"
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", target)
    with pytest.raises(ParamsError) as err:
        train(small_params(tmp_path / "run", tiny_model_dir, max_steps=2))
    message = str(err.value)
    assert message.startswith(f"AIP_CHECKPOINT_DIR: checkpoints cannot be written to {target.rstrip('/')}")
    assert "\n" not in message
    assert not (tmp_path / "run" / "tensorboard").exists()  # nothing was trained


def test_an_incomplete_newest_checkpoint_is_never_resumed(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    params = small_params(run, tiny_model_dir, max_steps=6, save_steps=3, save_total_limit=3)
    train(params)
    half = run / "checkpoints" / "checkpoint-6"
    (half / train_ckpt.MARKER).unlink()  # as if the VM died before the marker was written
    longer = train(params.with_overrides(max_steps=9))
    assert longer.metrics["resumed_from"].endswith("checkpoint-3")
