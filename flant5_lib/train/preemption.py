"""Spot preemption on Vertex AI: which run a checkpoint belongs to, a writable AIP_CHECKPOINT_DIR, and how long
each save (the SIGTERM one above all) took against the preemption notice window.

Vertex restarts a preempted worker with the same environment (the same AIP_CHECKPOINT_DIR), and the entry point
resumes from the newest complete checkpoint there on its own. That is only right when the checkpoint was written
by the same run: same training parameters, same training data. Any other checkpoint is refused with one line
before anything is trained, uploaded or pruned, so a resume never overwrites another run's work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from flant5_lib.errors import ParamsError
from flant5_lib.train import checkpoints as train_ckpt

if TYPE_CHECKING:
    from flant5_lib.config import Params

log = logging.getLogger(__name__)

# Compute Engine gives a Spot (and preemptible) VM 30 s between the preemption notice (ACPI G2 soft off; the
# container gets SIGTERM) and the hard stop. Vertex AI training runs on such VMs with scheduling_strategy SPOT.
NOTICE_WINDOW_S = 30.0

# The fields a checkpoint's optimiser state, data order and schedule depend on: resuming with any of them changed
# would silently train a mixture of two runs. Fields that only extend or observe a run (max_steps,
# num_train_epochs, save_*, logging_*, eval_*, run_dir, Vertex and serving settings) may change between sessions.
RESUME_FIELDS = (
    "model_name", "dataset", "max_train_samples", "seed", "text_column", "summary_column", "source_prefix",
    "turn_separator", "max_source_length", "max_target_length", "learning_rate", "weight_decay", "warmup_ratio",
    "lr_scheduler_type", "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "precision",
    "group_by_length", "pad_to_max_length", "label_smoothing", "max_grad_norm", "lora", "lora_r", "lora_alpha",
    "lora_dropout", "lora_target_modules",
)
RUN_KEY = "run"  # the marker's fingerprint entry holding {"params": {...}, "data": sha256}


def data_fingerprint(dataset: Any) -> str:
    """sha256 of the training split's rows in order (every column): the same records, or not."""
    h = hashlib.sha256()
    for name in sorted(dataset.column_names):
        h.update(name.encode("utf-8"))
        for value in dataset[name]:
            h.update(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


def run_fingerprint(params: Params, train_dataset: Any) -> dict[str, Any]:
    return {"params": {k: getattr(params, k) for k in RESUME_FIELDS}, "data": data_fingerprint(train_dataset)}


def check_same_run(folder: Path, run: dict[str, Any], where: str) -> None:
    """Raise one ParamsError line naming the fields when `folder` was written by another run."""
    saved = ((train_ckpt.read_marker(folder) or {}).get("fingerprint") or {}).get(RUN_KEY)
    if saved is None:
        log.warning("%s records no run fingerprint (written before it was kept): parameters and data not checked", folder)
        return
    theirs, ours = saved.get("params", {}), run["params"]
    diffs = [f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in ours if k in theirs and theirs[k] != ours[k]]
    fields = [d.split(" ", 1)[0] for d in diffs]
    if saved.get("data") != run["data"]:
        diffs.append(f"training data fingerprint {str(saved.get('data'))[:12]} there, {run['data'][:12]} here")
        fields.append("dataset")
    if diffs:
        raise ParamsError(
            f"{', '.join(dict.fromkeys(fields))}: the checkpoint {folder.name} in {where} belongs to another run "
            f"({'; '.join(diffs[:4])}); nothing was resumed or overwritten. Use the original values, point "
            "AIP_CHECKPOINT_DIR/run_dir at a new folder, or set resume=never to start over (its checkpoints are then replaced)"
        )


def checkpoint_field(paths: Any) -> tuple[str, str]:
    """(the setting that chose the checkpoint folder, its value): AIP_CHECKPOINT_DIR when Vertex set it, else run_dir."""
    from flant5_lib.train.setup import ENV_CHECKPOINT_DIR

    if paths.checkpoint_uri:
        return ENV_CHECKPOINT_DIR, paths.checkpoint_uri
    if os.environ.get(ENV_CHECKPOINT_DIR, "").strip():
        return ENV_CHECKPOINT_DIR, str(paths.checkpoint_dir)
    return "run_dir", str(paths.checkpoint_dir)


def check_writable(paths: Any) -> None:
    """Write and delete a probe where checkpoints go (gs:// or local) before any work: a job that could not save
    on its preemption notice would lose everything since its start, and learn it only then."""
    field, where = checkpoint_field(paths)
    probe = f".flant5-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        if paths.checkpoint_uri:
            from flant5_lib import storage

            client = storage.storage_client()
            uri = storage.join_gcs(paths.checkpoint_uri, probe)
            storage.write_text(uri, "probe", client=client)
            bucket, key = storage.split_gcs(uri)
            client.bucket(bucket).blob(key).delete()
        else:
            paths.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            target = paths.checkpoint_dir / probe
            target.write_text("probe", encoding="utf-8")
            target.unlink()
    except Exception as err:  # any failure here means the job cannot checkpoint: say so in one line
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        fix = ("give the job's service account write access to that bucket (roles/storage.objectAdmin) or set "
               "train_output_dir to a bucket it can write" if paths.checkpoint_uri else
               "make it writable or point it at a writable folder")
        raise ParamsError(f"{field}: checkpoints cannot be written to {where} ({reason}); {fix}") from None


class SaveClock(TrainerCallback):
    """Log how long each checkpoint took, written and (when mirrored) uploaded with its marker; for the SIGTERM
    save also the time since the signal, against the notice window. `saves` keeps them for reports and tests."""

    def __init__(self, preempt: Any, trainer: Any = None, notice_s: float = NOTICE_WINDOW_S) -> None:
        self.preempt = preempt
        self.trainer = trainer  # set once the Trainer exists: it stamps `save_started` when a save begins
        self.notice_s = notice_s
        self.saves: list[dict[str, Any]] = []

    def on_save(self, args, state, control, **kwargs):  # type: ignore[override]
        now = time.monotonic()
        started = getattr(self.trainer, "save_started", None)
        row: dict[str, Any] = {"step": state.global_step, "save_s": round(now - started, 3) if started else None}
        signalled = getattr(self.preempt, "requested_at", None)
        if signalled is not None and self.preempt.requested:
            row["since_sigterm_s"] = round(now - signalled, 3)
            fits = row["since_sigterm_s"] <= self.notice_s
            log.warning("SIGTERM save: checkpoint-%d complete %.2f s after the signal (save itself %.2f s; notice "
                        "window %.0f s: %s)", state.global_step, row["since_sigterm_s"], row["save_s"] or 0.0,
                        self.notice_s, "fits" if fits else "TOO SLOW, the VM would be stopped first")
        elif state.is_world_process_zero:
            log.info("checkpoint-%d saved in %.2f s", state.global_step, row["save_s"] or 0.0)
        self.saves.append(row)
        return control
