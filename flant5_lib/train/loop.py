"""Fine-tune a Flan-T5-family model on dialogue summaries with the Hugging Face Trainer.

`flant5 train --params FILE`, `python -m flant5_lib.train --params FILE` and `torchrun ... -m flant5_lib.train`
run this same code. Batches are padded per batch and grouped by length; bf16/TF32/fused AdamW are used where
the GPU supports them; checkpoints are atomic, resumed automatically and mirrored to the AIP_* gs:// folders
that Vertex AI sets, so a preempted job continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.errors import DataError, UserError
from flant5_lib.train.setup import (
    apply_lora,
    check_distributed,
    choose_device,
    fsdp_arguments,
    model_fingerprint,
    resolve_paths,
)

if TYPE_CHECKING:
    from flant5_lib.config import Params

log = logging.getLogger(__name__)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the job is not finished, a checkpoint is (Vertex must not call it a success)


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]]
    interrupted: bool = False
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _load_data(params: Params, want_eval: bool) -> tuple[Any, Any | None]:
    from flant5_lib.data import load_from_params

    train_ds = load_from_params(params, "train")
    eval_ds = None
    if want_eval:
        try:
            eval_ds = load_from_params(params, "validation")
        except DataError as err:
            log.warning("no validation split (%s): validation loss is not computed", err)
    return train_ds, eval_ds


def _training_arguments(params: Params, paths: Any, device: Any, mode: str, has_eval: bool) -> Any:
    from transformers import Seq2SeqTrainingArguments

    extra: dict[str, Any] = {}
    if mode == "fsdp":
        extra.update(fsdp_arguments(params.model_name))
    if mode == "ddp":
        extra["ddp_find_unused_parameters"] = False  # every T5 weight takes part in each step
    if params.gradient_checkpointing:
        extra["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return Seq2SeqTrainingArguments(
        output_dir=str(paths.checkpoint_dir),
        seed=params.seed,
        num_train_epochs=params.num_train_epochs,
        max_steps=params.max_steps,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio in transformers v5
        lr_scheduler_type=params.lr_scheduler_type,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_eval_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        optim=device.optim,
        bf16=device.bf16,
        tf32=device.tf32,
        use_cpu=device.use_cpu,
        torch_compile=params.torch_compile,
        activation_checkpointing=params.gradient_checkpointing,
        train_sampling_strategy="random",  # length grouping is our own epoch-seeded sampler (FlanT5Trainer)
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=None,  # rotation is done by train_ckpt.rotate, atomically
        eval_strategy=params.eval_strategy if has_eval else "no",
        eval_steps=params.eval_steps,
        report_to="none",  # TensorBoard is added explicitly with the right folder
        disable_tqdm=False,
        dataloader_num_workers=params.dataloader_num_workers,
        dataloader_pin_memory=device.pin_memory,
        predict_with_generate=False,
        **extra,
    )


def _tokenize(dataset: Any, tokenizer: Any, params: Params) -> Any:
    from flant5_lib.preprocess import make_train_features

    return dataset.map(
        make_train_features(tokenizer, params), batched=True, remove_columns=dataset.column_names, desc="tokenizing"
    )


def _resume_point(params: Params, paths: Any, fingerprint: dict[str, Any], is_main: bool) -> Path | None:
    if params.resume == "never":
        if is_main:
            train_ckpt.clear_checkpoints(paths.checkpoint_dir)
        return None
    ckpt = train_ckpt.newest_complete(paths.checkpoint_dir)
    if ckpt is not None:
        train_ckpt.check_compatible(ckpt, fingerprint)
        log.info("resuming from %s", ckpt)
    return ckpt


def _save_final(trainer: Any, model: Any, tokenizer: Any, params: Params, out: Path, base_ref: str, mode: str) -> None:
    """Merged weights (default), the adapter alone (lora_export=adapter), or the gathered FSDP state dict."""
    from flant5_lib.modeling import save_model, write_model_folder

    if mode == "fsdp":
        state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective: every rank
        if trainer.args.should_save:
            unwrapped = trainer.accelerator.unwrap_model(trainer.model_wrapped)
            write_model_folder(out, lambda tmp: unwrapped.save_pretrained(tmp, state_dict=state_dict), tokenizer, params)
        return
    if not trainer.args.should_save:
        return
    if params.lora and params.lora_export == "adapter":
        model.peft_config["default"].base_model_name_or_path = base_ref

        def write_adapter(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)  # adapter_config.json + adapter_model.safetensors
            model.base_model.model.generation_config.save_pretrained(tmp)

        write_model_folder(out, write_adapter, tokenizer, params)
        return
    if params.lora:
        model = model.merge_and_unload()
    save_model(model, tokenizer, out, params)


def _write_reports(out: Path, metrics: dict[str, Any], log_history: list[dict[str, Any]]) -> None:
    from flant5_lib.fileio import write_json

    write_json(out / "train_metrics.json", metrics)
    write_json(out / "log_history.json", log_history)
    try:
        from flant5_lib.plots import plot_loss_curves
    except ImportError:  # plots.py belongs to the evaluation helper; training must not depend on it being there
        log.warning("flant5_lib.plots not available: loss_curve.png not drawn")
        return
    plot_loss_curves(log_history, out / "loss_curve.png")


def train(params: Params) -> TrainResult:
    """Fine-tune `params.model_name` on `params.dataset`; returns where the model went and its metrics."""
    from transformers import set_seed
    from transformers.integrations import TensorBoardCallback

    from flant5_lib.modeling import load_model_and_tokenizer, resolve_model_path
    from flant5_lib.preprocess import make_collator
    from flant5_lib.train.trainer import FlanT5Trainer, GcsSyncCallback, PreemptionCallback

    device = choose_device(params)  # bad precision/engine combinations fail here, before anything loads
    mode = check_distributed(params)
    paths = resolve_paths(params)
    train_raw, eval_raw = _load_data(params, params.eval_strategy != "no")
    args = _training_arguments(params, paths, device, mode, eval_raw is not None)
    is_main = args.process_index == 0
    log.info("training on %s (%s, %d process%s)", device.description, mode, args.world_size, "es" if args.world_size > 1 else "")

    with args.main_process_first(local=True, desc="model and checkpoint download"):
        if args.local_process_index == 0:
            paths.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            train_ckpt.clean_incomplete(paths.checkpoint_dir)
            if paths.checkpoint_uri and params.resume == "auto":
                train_ckpt.download_newest(paths.checkpoint_uri, paths.checkpoint_dir)
        model_path = resolve_model_path(params)
    model, tokenizer = load_model_and_tokenizer(model_path, params.tokenizer_name, device="cpu")
    fingerprint = model_fingerprint(model, params)
    resume_from = _resume_point(params, paths, fingerprint, is_main)
    base_ref = params.model_name if params.model_name.startswith("gs://") or not Path(model_path).exists() else str(Path(model_path).resolve())
    set_seed(params.seed)
    if params.gradient_checkpointing:
        model.config.use_cache = False
    if params.lora:
        model = apply_lora(model, params)
        if params.gradient_checkpointing:
            model.enable_input_require_grads()

    train_ds = _tokenize(train_raw, tokenizer, params)
    eval_ds = _tokenize(eval_raw, tokenizer, params) if eval_raw is not None else None
    lengths = [len(x) for x in train_ds["input_ids"]] if params.group_by_length and not params.pad_to_max_length else None
    collator = make_collator(tokenizer, model.get_base_model() if params.lora else model, params)

    tb = TensorBoardCallback()
    tb.logging_dir = str(paths.tensorboard_dir)
    preempt = PreemptionCallback()
    callbacks = [tb, preempt]
    if paths.checkpoint_uri or paths.tensorboard_uri:
        callbacks.append(GcsSyncCallback(paths.checkpoint_dir, paths.checkpoint_uri, paths.tensorboard_dir, paths.tensorboard_uri))
    trainer = FlanT5Trainer(
        model=model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=callbacks,
        fingerprint=fingerprint, keep_checkpoints=params.save_total_limit, lengths=lengths,
    )

    preempt.install()
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        preempt.uninstall()
    wall = time.perf_counter() - started
    padding = trainer.padding_stats()
    metrics: dict[str, Any] = {
        "train_loss": output.training_loss,
        "train_runtime": output.metrics.get("train_runtime", wall),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "train_tokens_per_second": round(padding["real_tokens"] / wall, 1) if wall > 0 else None,
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "resumed_from": str(resume_from) if resume_from else None,
        "num_train_examples": len(train_ds),
        "device": device.description,
        "world_size": args.world_size,
        **padding,
    }
    log_history = list(trainer.state.log_history)
    if preempt.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        ckpt = train_ckpt.newest_complete(paths.checkpoint_dir)
        log.warning("stopped by SIGTERM at step %d; checkpoint %s; run the same command again to resume", trainer.state.global_step, ckpt)
        return TrainResult(paths.model_dir, metrics, log_history, interrupted=True, checkpoint=ckpt)

    if eval_ds is not None:
        metrics["eval_loss"] = trainer.evaluate().get("eval_loss")
        log_history = list(trainer.state.log_history)
    _save_final(trainer, trainer.model, tokenizer, params, paths.model_dir, base_ref, mode)
    if is_main:
        _write_reports(paths.model_dir, metrics, log_history)
        if paths.model_uri:
            from flant5_lib import storage

            storage.upload_dir(paths.model_dir, paths.model_uri)
            log.info("model uploaded to %s", paths.model_uri)
        if paths.tensorboard_uri:
            GcsSyncCallback(paths.checkpoint_dir, None, paths.tensorboard_dir, paths.tensorboard_uri).sync_tensorboard()
    trainer.accelerator.wait_for_everyone()
    log.info("model saved in %s (train loss %.4f, padding %.1f%%)", paths.model_dir, metrics["train_loss"], 100 * padding["padding_fraction"])
    return TrainResult(paths.model_dir, metrics, log_history, checkpoint=train_ckpt.newest_complete(paths.checkpoint_dir))


# --- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", metavar="FILE", help="YAML file of parameter overrides (local path or gs:// URI)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one parameter (repeatable), e.g. --set num_train_epochs=3")


def run(args: argparse.Namespace) -> int:
    """Shared by `flant5 train` and `python -m flant5_lib.train`; prints the model folder."""
    from flant5_lib.config import load_params, parse_set

    result = train(load_params(args.params, parse_set(args.overrides)))
    if result.interrupted:
        print(f"interrupted at step {result.metrics['global_step']}; checkpoint {result.checkpoint}; run again to resume",
              file=sys.stderr)
        return EXIT_PREEMPTED
    print(result.model_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flant5_lib.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(args)
    except UserError as err:
        print(f"flant5 train: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
