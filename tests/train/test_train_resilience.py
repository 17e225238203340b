"""Preemption: SIGTERM saves and stops, SIGKILL mid-epoch resumes to the same end, gs:// checkpoints survive a new VM."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.train.loop import EXIT_PREEMPTED, train
from tests.helpers.train import small_params, start_training, wait_for, write_params

pytestmark = pytest.mark.timeout(300)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    # 300 steps and no periodic save before step 1000: only the SIGTERM handler can write a checkpoint.
    pfile = write_params(tmp_path / "p.yaml", small_params(run, tiny_model_dir, max_steps=300, save_steps=1000))
    log = tmp_path / "train.log"
    proc = start_training(pfile, log)
    tb = run / "tensorboard"
    wait_for(lambda: tb.is_dir() and any(tb.glob("events.*")), proc, 120, "training to start", log)
    wait_for(lambda: "'loss'" in log.read_text(), proc, 120, "the first logged loss", log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED, log.read_text()[-2000:]
    text = log.read_text()
    assert "Traceback" not in text and "run again to resume" in text
    ckpts = train_ckpt.list_checkpoints(run / "checkpoints")
    assert len(ckpts) == 1, ckpts
    step, folder = ckpts[0]
    assert 2 <= step < 300 and train_ckpt.is_complete(folder)
    assert not (run / "model").exists()  # an unfinished run publishes no model


@pytest.mark.slow
def test_sigkill_mid_epoch_then_restart_ends_at_the_same_step(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    params = small_params(run, tiny_model_dir, dataset="synthetic:400", max_steps=40, save_steps=3, save_total_limit=3)
    pfile = write_params(tmp_path / "p.yaml", params)
    ckpts = run / "checkpoints"
    log = tmp_path / "first.log"
    proc = start_training(pfile, log)
    # Kill right after a save has started for step >= 9 (mid-epoch: an epoch is 40 steps), without warning.
    wait_for(lambda: any(s >= 9 for s, _ in train_ckpt.list_checkpoints(ckpts)), proc, 180, "checkpoint 9", log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    survivors = train_ckpt.list_checkpoints(ckpts)
    assert survivors and all(train_ckpt.is_complete(f) for _, f in survivors)  # atomic: never a half folder by name
    killed_at = max(s for s, _ in survivors)
    assert killed_at < 40

    log2 = tmp_path / "second.log"
    proc2 = start_training(pfile, log2, cli=True)  # `flant5 train` is the same code
    assert proc2.wait(timeout=240) == 0, log2.read_text()[-3000:]
    metrics = json.loads((run / "model" / "train_metrics.json").read_text())
    assert metrics["global_step"] == 40
    assert metrics["resumed_from"] is not None and int(metrics["resumed_from"].rsplit("-", 1)[1]) >= killed_at
    final = train_ckpt.list_checkpoints(ckpts)
    assert [s for s, _ in final][-1] == 40 and len(final) <= 3
    assert all(train_ckpt.is_complete(f) for _, f in final)
    assert not (ckpts / train_ckpt.STAGING).exists()
    state = json.loads((ckpts / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40


def test_vertex_env_with_gs_paths_syncs_and_resumes_on_a_new_vm(
    tmp_path: Path, tiny_model_dir: Path, gcs_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flant5_lib import storage

    bucket = f"gs://train-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(bucket)
    monkeypatch.setenv("AIP_MODEL_DIR", f"{bucket}/job/model/")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", f"{bucket}/job/checkpoints/")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", f"{bucket}/job/logs/")
    # Params come from the bucket too, as in a Vertex job.
    params = small_params(tmp_path / "vm1", tiny_model_dir, max_steps=10, save_total_limit=1)
    storage.write_text(f"{bucket}/job/params.yaml", (write_params(tmp_path / "p.yaml", params)).read_text())
    from flant5_lib.config import load_params, parse_set

    first = train(load_params(f"{bucket}/job/params.yaml"))
    assert first.metrics["global_step"] == 10
    names = set(storage.list_blobs(f"{bucket}/job"))
    assert {"model/model.safetensors", "model/config.json", "model/train_metrics.json", "model/flant5_params.yaml"} <= names
    assert "checkpoints/checkpoint-10/flant5_checkpoint.json" in names
    assert not any(n.startswith("checkpoints/checkpoint-5/") for n in names)  # rotated remotely too
    assert any(n.startswith("logs/events.out.tfevents") for n in names)

    # A fresh VM: empty local disk, same AIP_* folders -> downloads checkpoint-10 and continues.
    second = train(load_params(f"{bucket}/job/params.yaml", parse_set(["run_dir=" + str(tmp_path / "vm2"), "max_steps=15"])))
    assert second.metrics["resumed_from"] == str((tmp_path / "vm2" / "checkpoints" / "checkpoint-10").resolve())
    assert second.metrics["global_step"] == 15
    remote = json.loads(storage.read_text(f"{bucket}/job/model/train_metrics.json"))
    assert remote["global_step"] == 15
    assert "checkpoints/checkpoint-15/flant5_checkpoint.json" in set(storage.list_blobs(f"{bucket}/job"))


def test_incomplete_remote_checkpoint_is_not_downloaded(tmp_path: Path, gcs_emulator: str) -> None:
    from flant5_lib import storage

    uri = f"gs://ckpt-{uuid.uuid4().hex[:8]}/c"
    storage.ensure_bucket(uri)
    good = tmp_path / "src" / "checkpoint-4"
    good.mkdir(parents=True)
    (good / "model.safetensors").write_bytes(b"x" * 100)
    train_ckpt.write_marker(good, 4, {"d_model": 8})
    train_ckpt.upload_checkpoint(good, uri, {"checkpoint-4"})
    # checkpoint-8: upload stopped before the marker (VM died mid-upload).
    storage.upload_file(good / "model.safetensors", f"{uri}/checkpoint-8/model.safetensors")
    got = train_ckpt.download_newest(uri, tmp_path / "local")
    assert got == tmp_path / "local" / "checkpoint-4" and train_ckpt.is_complete(got)
    assert not (tmp_path / "local" / "checkpoint-8").exists()
    assert os.path.getsize(got / "model.safetensors") == 100


def test_best_checkpoint_is_fetched_from_the_mirror_on_a_fresh_vm(tmp_path: Path, gcs_emulator: str) -> None:
    """A resumed run on a new VM holds only the newest checkpoint locally; the best one comes from gs://."""
    from flant5_lib import storage

    uri = f"gs://best-{uuid.uuid4().hex[:8]}/c"
    storage.ensure_bucket(uri)
    src = tmp_path / "vm1"
    for step in (4, 8):
        folder = src / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(bytes([step]) * 64)
        train_ckpt.write_marker(folder, step, {"d_model": 8})
    train_ckpt.upload_checkpoint(src / "checkpoint-4", uri, {"checkpoint-4", "checkpoint-8"})
    storage.upload_file(src / "checkpoint-8" / "model.safetensors", f"{uri}/checkpoint-8/model.safetensors")  # no marker

    local = tmp_path / "vm2"
    local.mkdir()
    got = train_ckpt.fetch(local, 4, uri)
    assert got == local / "checkpoint-4" and train_ckpt.is_complete(got)
    assert (got / "model.safetensors").read_bytes() == bytes([4]) * 64
    assert train_ckpt.fetch(local, 4, None) == got  # already local: no mirror needed
    assert train_ckpt.fetch(local, 8, uri) is None  # an incomplete upload is never used
    assert train_ckpt.fetch(local, 12, None) is None
