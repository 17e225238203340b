"""The Seq2SeqTrainer subclass and callbacks: atomic checkpoints, validation ROUGE, best-model selection, early
stopping, the non-finite guard, padding accounting, SIGTERM and timed saves, gs:// sync."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from flant5_lib.errors import UserError
from flant5_lib.train import checkpoints as train_ckpt

log = logging.getLogger(__name__)


class NonFiniteError(UserError):
    """The loss or the gradient norm went NaN/inf: training stopped before the optimiser applied it."""

    exit_code = 1  # a failed run, not a usage error; still one line, no traceback


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


def token_mean_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None, *,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy summed over label tokens, divided by the label tokens of the whole optimiser step.

    Why not T5's own loss: it is a per-micro-batch mean that ignores `num_items_in_batch`, yet its forward takes
    **kwargs, so the Trainer (transformers 5.24) assumes it is normalised over the step: it skips the division by
    gradient_accumulation_steps and multiplies by the number of processes. Logged losses and gradients are then
    N times too large under DDP or gradient accumulation. This makes 2 x 4 and 1 x 8 the same optimisation.
    Label smoothing is applied per token inside the sum (padding excluded), so the same division keeps it exact
    under accumulation and DDP. Evaluation (num_items_in_batch None) is the plain cross-entropy, smoothing or not,
    so eval_loss stays comparable between runs.
    """
    logits = outputs["logits"]
    labels = labels.to(logits.device)
    smoothing = label_smoothing if num_items_in_batch is not None else 0.0
    total = torch.nn.functional.cross_entropy(
        logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100, reduction="sum",
        label_smoothing=smoothing,
    )
    if num_items_in_batch is None:  # evaluation: plain per-token mean
        return total / (labels != -100).sum().clamp(min=1)
    return total / num_items_in_batch


def agree_across_ranks(flags: list[bool], args: Any) -> list[bool]:
    """OR of each flag over every process (one all-reduce), so all ranks save or stop at the same step."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(x > 0) for x in t.tolist()]
    return list(flags)


class FlanT5Trainer(Seq2SeqTrainer):
    """Seq2SeqTrainer with atomic checkpoints, own rotation, epoch-seeded length grouping, padding counts,
    validation ROUGE with the project's own generation, best-checkpoint selection, early stopping and a guard
    that stops at the first non-finite loss or gradient norm."""

    def __init__(self, *args: Any, fingerprint: dict[str, Any], keep_checkpoints: int, lengths: list[int] | None,
                 run_params: Any, rouge_records: list[dict[str, str]] | None = None, precision: str = "fp32",
                 prior_loss_sum: float | None = 0.0, **kwargs: Any) -> None:
        import functools

        loss = functools.partial(token_mean_loss, label_smoothing=run_params.label_smoothing)
        super().__init__(*args, compute_loss_func=loss, **kwargs)
        self.fingerprint = fingerprint
        self.keep_checkpoints = keep_checkpoints
        self.lengths = lengths
        self.run_params = run_params
        self.rouge_records = rouge_records or []
        self.precision = precision
        # Loss summed over the steps before this session (None: resumed from a checkpoint that did not record it).
        self.prior_loss_sum = prior_loss_sum
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
        loss = super().training_step(model, inputs, num_items_in_batch)
        # One sync per micro-batch, as transformers' own logging_nan_inf_filter (switched off here) would cost.
        if not bool(torch.isfinite(loss)):
            self._stop_non_finite("loss", float(loss))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):  # type: ignore[override]
        """The norm of the all-reduced gradients: the same on every rank, so every rank stops at the same step,
        before `optimizer.step()` could write the non-finite update into the weights."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(grad_norm) if grad_norm is not None else 0.0
        if value != value or value in (float("inf"), float("-inf")):
            self._stop_non_finite("gradient norm", value)
        return grad_norm

    def _stop_non_finite(self, what: str, value: float) -> None:
        step = self.state.global_step + 1  # the optimiser step being computed
        newest = train_ckpt.newest_complete(Path(self.args.output_dir))
        tips = [f"a lower learning_rate (now {self.args.learning_rate:g})"]
        if not self.run_params.warmup_ratio:
            tips.append("warmup_ratio=0.05")
        if not self.args.max_grad_norm:
            tips.append("max_grad_norm=1.0")
        if self.precision != "fp32":
            tips.append("precision=fp32 (bf16 T5 has gone NaN on several GPUs: transformers#18899)")
        raise NonFiniteError(
            f"step {step}: {what} is {value} ({self.precision}, {self.args.world_size} process"
            f"{'es' if self.args.world_size > 1 else ''}); training stopped before this update and no checkpoint was "
            f"written from it (newest good checkpoint: {newest or 'none'}). Try {', '.join(tips)}, "
            "or check the training rows near this step"
        )

    # --- validation ROUGE, best model, early stopping ---
    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,  # type: ignore[override]
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.rouge_records and metric_key_prefix == "eval":
            for key, value in self.validation_rouge().items():
                output.metrics[f"{metric_key_prefix}_{key}"] = round(value, 4)
        return output

    def validation_rouge(self) -> dict[str, float]:
        """ROUGE of the validation subset with evaluate's own generation and scoring (length-sorted batches).

        Every rank generates the whole subset: the metric is then identical everywhere without a collective, so
        all ranks take the same save/stop decisions (and FSDP's sharded generate runs in lockstep).
        """
        from flant5_lib.inference import generate_summaries
        from flant5_lib.metrics import compute_rouge

        model = self.model
        was_training = model.training
        model.eval()
        bf16 = bool(self.args.bf16)
        try:
            with torch.autocast(device_type=self.args.device.type, dtype=torch.bfloat16, enabled=bf16):
                preds = generate_summaries(model, self.processing_class, [r["dialogue"] for r in self.rouge_records],
                                           self.run_params, progress=False)
        finally:
            model.train(was_training)
        return compute_rouge(preds, [r["summary"] for r in self.rouge_records])

    def _determine_best_metric(self, metrics, trial):  # type: ignore[override]
        is_best = super()._determine_best_metric(metrics, trial)
        if is_best and self.run_params.keep_best_model:
            self.control.should_save = True  # the best state must exist as a checkpoint to be published
        patience = self.run_params.early_stopping_patience
        if patience is not None and self.state.best_global_step:
            key = self.args.metric_for_best_model
            since = [e for e in self.state.log_history if key in e and e.get("step", 0) > self.state.best_global_step]
            if len(since) >= patience:
                log.warning("early stopping at step %d: %s has not improved on %.4f (step %d) for %d evaluations",
                            self.state.global_step, key, self.state.best_metric, self.state.best_global_step, len(since))
                self.control.should_training_stop = True
                self.control.should_save = True  # resume must see the same stop, not train on
        return is_best

    def session_loss_sum(self) -> float:
        """Loss summed over this session's optimiser steps so far (mean over processes), as transformers counts it."""
        pending = getattr(self, "_tr_loss", None)
        total = float(getattr(self, "_total_loss_scalar", 0.0))
        if pending is not None:
            pending = pending.detach().clone()
            if self.args.world_size > 1:
                pending = self.accelerator.reduce(pending, reduction="mean")
            total += float(pending)
        return total

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
            "source_tokens": int(src_real),
            "target_tokens": int(tgt_real),
        }

    # --- checkpoints ---
    def _get_output_dir(self, trial):  # type: ignore[override]
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        self.save_started = time.monotonic()  # preemption.SaveClock logs the duration (SIGTERM save: vs the notice window)
        root = Path(self.args.output_dir)
        self._staging_root = str(root / train_ckpt.STAGING)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        session = self.session_loss_sum()  # collective under DDP: every rank
        self.accelerator.wait_for_everyone()  # every rank's optimizer/rng shards are on disk
        if self.args.should_save:
            staged = root / train_ckpt.STAGING / f"checkpoint-{self.state.global_step}"
            from flant5_lib.fileio import write_json

            if self.prior_loss_sum is not None:
                write_json(staged / train_ckpt.RUN_TOTALS, {"step": self.state.global_step, "loss_sum": self.prior_loss_sum + session})
            if self.state.best_global_step:  # transformers recorded the staging path; name the published folder
                state_file = staged / "trainer_state.json"
                saved = json.loads(state_file.read_text(encoding="utf-8"))
                saved["best_model_checkpoint"] = str(root / f"checkpoint-{self.state.best_global_step}")
                write_json(state_file, saved)
                self.state.best_model_checkpoint = saved["best_model_checkpoint"]
            final = train_ckpt.publish(staged, root, self.state.global_step, self.fingerprint)
            train_ckpt.rotate(root, self.keep_checkpoints, protect=self.best_step())
            log.info("checkpoint %s written", final)
        self.accelerator.wait_for_everyone()

    def best_step(self) -> int | None:
        """Step of the best evaluation when it is kept (its checkpoint survives rotation and is published)."""
        return self.state.best_global_step or None if self.run_params.keep_best_model else None


class PreemptionCallback(TrainerCallback):
    """Bound the work a Spot preemption loses: on SIGTERM (preemption, `kill`, Vertex cancel) save at the next step
    boundary and stop; and save whenever `save_every_s` passed since the last checkpoint.

    All ranks agree through one all-reduce per step (rank 0's clock decides the timed save), so one process
    receiving the signal or reading its clock differently never leaves the others hanging in a save.
    """

    def __init__(self, save_every_s: float | None = None) -> None:
        self.requested = False
        self.requested_at: float | None = None
        self.stopped_at: int | None = None
        self._previous: Any = None
        self.save_every_s = save_every_s
        self._last_save = time.monotonic()

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
        self.requested_at = time.monotonic()
        log.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[override]
        self._last_save = time.monotonic()
        return control

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
        due = (self.save_every_s is not None and state.is_world_process_zero
               and time.monotonic() - self._last_save >= self.save_every_s)
        requested, timed = agree_across_ranks([self.requested, due], args)
        if timed:
            control.should_save = True
        if requested:
            self.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):  # type: ignore[override]
        self._last_save = time.monotonic()
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
                if state.best_global_step:  # a fresh VM holds only the newest locally: never delete the best remotely
                    keep.add(f"checkpoint-{state.best_global_step}")
                train_ckpt.upload_checkpoint(folder, self.checkpoint_uri, keep)
                log.info("checkpoint %s uploaded to %s", folder.name, self.checkpoint_uri)
        self.sync_tensorboard()
        return control

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[override]
        if state.is_world_process_zero:
            self.sync_tensorboard()
        return control
