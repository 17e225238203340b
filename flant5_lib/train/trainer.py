"""The Seq2SeqTrainer subclass and callbacks: atomic checkpoints, padding accounting, SIGTERM, gs:// sync."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from flant5_lib.train import checkpoints as train_ckpt

log = logging.getLogger(__name__)


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order seeded by (seed, epoch): a resumed run replays the same batches, and megabatches are
    sized on the GLOBAL batch so 1 x 8 and 2 x 4 processes see the very same examples per optimiser step."""

    def __init__(self, lengths: list[int], global_batch: int, seed: int) -> None:
        super().__init__(global_batch, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # type: ignore[override]
        from transformers.trainer_pt_utils import get_length_grouped_indices

        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=gen))


def token_mean_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy summed over label tokens, divided by the label tokens of the whole optimiser step.

    Why not T5's own loss: it is a per-micro-batch mean that ignores `num_items_in_batch`, yet its forward takes
    **kwargs, so the Trainer (transformers 5.24) assumes it is normalised over the step: it skips the division by
    gradient_accumulation_steps and multiplies by the number of processes. Logged losses and gradients are then
    N times too large under DDP or gradient accumulation. This makes 2 x 4 and 1 x 8 the same optimisation.
    """
    logits = outputs["logits"]
    labels = labels.to(logits.device)
    total = torch.nn.functional.cross_entropy(
        logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100, reduction="sum"
    )
    if num_items_in_batch is None:  # evaluation: plain per-token mean
        return total / (labels != -100).sum().clamp(min=1)
    return total / num_items_in_batch


class FlanT5Trainer(Seq2SeqTrainer):
    """Seq2SeqTrainer with atomic checkpoints, own rotation, epoch-seeded length grouping and padding counts."""

    def __init__(self, *args: Any, fingerprint: dict[str, Any], keep_checkpoints: int, lengths: list[int] | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, compute_loss_func=token_mean_loss, **kwargs)
        self.fingerprint = fingerprint
        self.keep_checkpoints = keep_checkpoints
        self.lengths = lengths
        self._staging_root: str | None = None
        # Real and padded token counts of the batches actually fed to the model (kept on device: no sync per step).
        self.token_counts = torch.zeros(4, dtype=torch.float64)

    # --- batches ---
    def _get_train_sampler(self, train_dataset=None):  # type: ignore[override]
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        global_batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        return EpochLengthGroupedSampler(self.lengths, global_batch, self.args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[override]
        mask = inputs.get("attention_mask")
        labels = inputs.get("labels")
        if mask is not None and labels is not None:
            counts = torch.stack([
                mask.sum().double(), torch.tensor(float(mask.numel()), dtype=torch.float64, device=mask.device),
                (labels != -100).sum().double(), torch.tensor(float(labels.numel()), dtype=torch.float64, device=labels.device),
            ])
            if self.token_counts.device != counts.device:
                self.token_counts = self.token_counts.to(counts.device)
            self.token_counts += counts
        return super().training_step(model, inputs, num_items_in_batch)

    def padding_stats(self) -> dict[str, float]:
        """Summed over processes: padding fraction of source, target and both, and real (non-pad) tokens."""
        counts = self.token_counts.clone()
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts.to(self.args.device), reduction="sum")
        src_real, src_all, tgt_real, tgt_all = (float(x) for x in counts.cpu())

        def frac(real: float, total: float) -> float:
            return round(1 - real / total, 4) if total else 0.0

        return {
            "padding_fraction": frac(src_real + tgt_real, src_all + tgt_all),
            "source_padding_fraction": frac(src_real, src_all),
            "target_padding_fraction": frac(tgt_real, tgt_all),
            "real_tokens": int(src_real + tgt_real),
        }

    # --- checkpoints ---
    def _get_output_dir(self, trial):  # type: ignore[override]
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        root = Path(self.args.output_dir)
        self._staging_root = str(root / train_ckpt.STAGING)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every rank's optimizer/rng shards are on disk
        if self.args.should_save:
            staged = root / train_ckpt.STAGING / f"checkpoint-{self.state.global_step}"
            final = train_ckpt.publish(staged, root, self.state.global_step, self.fingerprint)
            train_ckpt.rotate(root, self.keep_checkpoints)
            log.info("checkpoint %s written", final)
        self.accelerator.wait_for_everyone()


class PreemptionCallback(TrainerCallback):
    """SIGTERM (Spot preemption, `kill`, Vertex cancel): save a checkpoint at the next step boundary and stop.

    All ranks agree through an all-reduce, so one process receiving the signal never leaves the others hanging.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second SIGTERM: stop now
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = True
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")

    def _any_rank_requested(self, args: Any) -> bool:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
            flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item() > 0)
        return self.requested

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
        if self._any_rank_requested(args):
            self.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


class GcsSyncCallback(TrainerCallback):
    """Mirror checkpoints (after each save) and TensorBoard events (each save and at the end) to gs://."""

    def __init__(self, checkpoint_dir: Path, checkpoint_uri: str | None, tb_dir: Path, tb_uri: str | None) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_uri = checkpoint_uri
        self.tb_dir = tb_dir
        self.tb_uri = tb_uri

    def sync_tensorboard(self) -> None:
        from flant5_lib import storage

        if self.tb_uri and self.tb_dir.is_dir() and any(p.is_file() for p in self.tb_dir.rglob("*")):
            storage.upload_dir(self.tb_dir, self.tb_uri)

    def on_save(self, args, state, control, **kwargs):  # type: ignore[override]
        if not state.is_world_process_zero:
            return control
        if self.checkpoint_uri:
            folder = self.checkpoint_dir / f"checkpoint-{state.global_step}"
            if train_ckpt.is_complete(folder):
                keep = {f.name for _, f in train_ckpt.list_checkpoints(self.checkpoint_dir)}
                train_ckpt.upload_checkpoint(folder, self.checkpoint_uri, keep)
                log.info("checkpoint %s uploaded to %s", folder.name, self.checkpoint_uri)
        self.sync_tensorboard()
        return control

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[override]
        if state.is_world_process_zero:
            self.sync_tensorboard()
        return control
