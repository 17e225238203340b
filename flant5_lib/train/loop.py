"""Fine-tune a Flan-T5-family model on dialogue summaries with the Hugging Face Trainer.

`flant5 train --params FILE`, `python -m flant5_lib.train --params FILE` and `torchrun ... -m flant5_lib.train`
run this same code. Batches are padded per batch and grouped by length; bf16/TF32/fused AdamW are used where
the GPU supports them; checkpoints are atomic, resumed automatically and mirrored to the AIP_* gs:// folders
that Vertex AI sets, so a preempted job continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.errors import DataError, UserError
from flant5_lib.train import checkpoints as train_ckpt
from flant5_lib.train.setup import (
    apply_lora,
    check_distributed,
    choose_device,
    fsdp_arguments,
    model_fingerprint,
    resolve_paths,
    topology,
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


@dataclass
class Prepared:
    """Everything `fit` and `finish` need, decided and loaded by `prepare`."""

    params: Params
    device: Any
    mode: str
    paths: Any
    trainer: Any
    tokenizer: Any
    preempt: Any
    resume_from: Path | None
    base_ref: str
    num_train_examples: int
    has_eval: bool


def _load_data(params: Params, want_eval: bool) -> tuple[Any, Any | None]:
    """Train split, and the validation split for evaluation and model selection (the test split is never read here)."""
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
    if has_eval:
        metric = params.metric_for_best_model
        extra["metric_for_best_model"] = metric if metric.startswith("eval_") else f"eval_{metric}"
        extra["greater_is_better"] = metric != "eval_loss"
    return Seq2SeqTrainingArguments(
        output_dir=str(paths.checkpoint_dir),
        seed=params.seed,
        num_train_epochs=params.num_train_epochs,
        max_steps=params.max_steps,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a ratio in transformers v5
        lr_scheduler_type=params.lr_scheduler_type,
        max_grad_norm=params.max_grad_norm,
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
        logging_nan_inf_filter=False,  # a non-finite loss stops the run (FlanT5Trainer), it is not averaged away
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=None,  # rotation is done by train_ckpt.rotate, atomically
        eval_strategy=params.eval_strategy if has_eval else "no",
        eval_steps=params.eval_steps,
        report_to="none",  # TensorBoard is added explicitly with the right folder
        disable_tqdm=False,
        dataloader_num_workers=params.dataloader_num_workers,
        dataloader_pin_memory=device.pin_memory,
        predict_with_generate=False,  # validation ROUGE uses the project's own length-sorted generation
        **extra,
    )


def _tokenize(dataset: Any, tokenizer: Any, params: Params) -> Any:
    from flant5_lib.preprocess import make_train_features

    return dataset.map(
        make_train_features(tokenizer, params), batched=True, remove_columns=dataset.column_names, desc="tokenizing"
    )


def _resume_point(params: Params, paths: Any, fingerprint: dict[str, Any], run: dict[str, Any], is_main: bool) -> Path | None:
    """The newest complete checkpoint, when it belongs to this run (same model, parameters and data); any other is
    refused with one line (`preemption.check_same_run`) before anything is trained, uploaded or pruned."""
    from flant5_lib.train.preemption import check_same_run, checkpoint_field

    if params.resume == "never":
        if is_main:
            train_ckpt.clear_checkpoints(paths.checkpoint_dir)
        return None
    ckpt = train_ckpt.newest_complete(paths.checkpoint_dir)
    if ckpt is not None:
        check_same_run(ckpt, run, checkpoint_field(paths)[1])
        train_ckpt.check_compatible(ckpt, fingerprint)
        log.warning("resuming automatically from %s (step %s; same parameters and training data)", ckpt,
                    (train_ckpt.read_marker(ckpt) or {}).get("step"))
    return ckpt


def _prior_loss_sum(resume_from: Path | None) -> float | None:
    """Loss summed over the steps before the resumed checkpoint (None: an older checkpoint that did not record it)."""
    if resume_from is None:
        return 0.0
    try:
        return float(json.loads((resume_from / train_ckpt.RUN_TOTALS).read_text(encoding="utf-8"))["loss_sum"])
    except (OSError, ValueError, KeyError):
        log.warning("%s has no %s: train_loss will cover only the steps run from now on", resume_from, train_ckpt.RUN_TOTALS)
        return None


# --- phase 1: prepare -------------------------------------------------------------------------


def prepare(params: Params, callbacks: list[Any] | None = None) -> Prepared:
    """Check the settings, load data and model, resume point, build the Trainer. Nothing is trained yet."""
    from transformers import set_seed
    from transformers.integrations import TensorBoardCallback

    from flant5_lib.modeling import load_model_and_tokenizer, resolve_model_path
    from flant5_lib.preprocess import make_collator
    from flant5_lib.train.preemption import SaveClock, check_writable, run_fingerprint
    from flant5_lib.train.trainer import FlanT5Trainer, GcsSyncCallback, PreemptionCallback
    from flant5_lib.train import hypertune

    device = choose_device(params)  # bad precision/engine combinations fail here, before anything loads
    mode = check_distributed(params)
    paths = resolve_paths(params)
    train_raw, eval_raw = _load_data(params, params.eval_strategy != "no")
    args = _training_arguments(params, paths, device, mode, eval_raw is not None)
    is_main = args.process_index == 0
    log.info("training on %s (%s, %d process%s)", device.description, mode, args.world_size, "es" if args.world_size > 1 else "")

    with args.main_process_first(local=True, desc="model and checkpoint download"):
        if args.local_process_index == 0:
            check_writable(paths)  # AIP_CHECKPOINT_DIR / run_dir: one line now, not a lost SIGTERM save later
            paths.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            train_ckpt.clean_incomplete(paths.checkpoint_dir)
            if paths.checkpoint_uri and params.resume == "auto":
                train_ckpt.download_newest(paths.checkpoint_uri, paths.checkpoint_dir)
        model_path = resolve_model_path(params)
    model, tokenizer = load_model_and_tokenizer(model_path, params.tokenizer_name, device="cpu")
    fingerprint = model_fingerprint(model, params)
    run = run_fingerprint(params, train_raw)
    resume_from = _resume_point(params, paths, fingerprint, run, is_main)
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
    rouge_records = None
    if eval_raw is not None and params.eval_rouge_samples > 0:
        subset = eval_raw.select(range(min(params.eval_rouge_samples, len(eval_raw))))
        rouge_records = [{"dialogue": r["dialogue"], "summary": r["summary"]} for r in subset]
    lengths = [len(x) for x in train_ds["input_ids"]] if params.group_by_length and not params.pad_to_max_length else None
    collator = make_collator(tokenizer, model.get_base_model() if params.lora else model, params)

    tb = TensorBoardCallback()
    tb.logging_dir = str(paths.tensorboard_dir)
    preempt = PreemptionCallback(params.save_every_minutes * 60 if params.save_every_minutes else None)
    all_callbacks = [tb, preempt, *hypertune.callbacks(), *(callbacks or [])]  # hypertune: only inside a tuning trial
    if paths.checkpoint_uri or paths.tensorboard_uri:
        all_callbacks.append(GcsSyncCallback(paths.checkpoint_dir, paths.checkpoint_uri, paths.tensorboard_dir, paths.tensorboard_uri))
    clock = SaveClock(preempt)  # last: its on_save runs after the upload, so the duration covers the marker upload
    all_callbacks.append(clock)
    trainer = FlanT5Trainer(
        model=model, args=args, data_collator=collator, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=all_callbacks,
        fingerprint={**fingerprint, "run": run}, keep_checkpoints=params.save_total_limit, lengths=lengths, run_params=params,
        rouge_records=rouge_records, precision="bf16" if device.bf16 else "fp32", prior_loss_sum=_prior_loss_sum(resume_from),
    )
    clock.trainer = trainer
    return Prepared(params, device, mode, paths, trainer, tokenizer, preempt, resume_from, base_ref, len(train_ds),
                    eval_ds is not None)


# --- phase 2: fit -----------------------------------------------------------------------------


def fit(prep: Prepared) -> tuple[Any, float]:
    """Run the Trainer (SIGTERM handled while it runs); returns its output and the wall time."""
    prep.preempt.install()
    started = time.perf_counter()
    try:
        output = prep.trainer.train(resume_from_checkpoint=str(prep.resume_from) if prep.resume_from else None)
    finally:
        prep.preempt.uninstall()
    return output, time.perf_counter() - started


# --- phase 3: finish --------------------------------------------------------------------------


def eval_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per validation evaluation: {step, epoch, eval_loss, rouge1, rouge2, rougeL, rougeLsum} (ROUGE
    None when it was not computed); what the run page plots and `eval_history.json` holds."""
    from flant5_lib.metrics import ROUGE_KEYS

    rows = []
    for e in log_history:
        if "eval_loss" in e:
            rows.append({"step": e.get("step"), "epoch": e.get("epoch"), "eval_loss": e["eval_loss"],
                         **{k: e.get(f"eval_{k}") for k in ROUGE_KEYS}})
    return rows


def _select_best(prep: Prepared) -> int:
    """Evaluate the final state if it was not, then load the best checkpoint's weights; returns the published step."""
    trainer = prep.trainer
    state = trainer.state
    if prep.has_eval and not any(e.get("step") == state.global_step and "eval_loss" in e for e in state.log_history):
        trainer._determine_best_metric(trainer.evaluate(), None)  # the final state competes too
    best = trainer.best_step()
    if not best or best == state.global_step:
        return state.global_step
    folder = None
    with trainer.args.main_process_first(local=True, desc="best checkpoint"):
        folder = train_ckpt.fetch(prep.paths.checkpoint_dir, best, prep.paths.checkpoint_uri)
    if folder is None:
        log.warning("best checkpoint (step %d) is gone; publishing the last state (step %d)", best, state.global_step)
        return state.global_step
    state.best_model_checkpoint = str(folder)
    trainer._load_best_model()
    log.info("publishing the best checkpoint: step %d, %s %.4f (last step %d)", best, trainer.args.metric_for_best_model,
             state.best_metric, state.global_step)
    return best


def _whole_run_loss(trainer: Any, output: Any) -> float:
    """Mean loss over every optimiser step of the run, across resumes (transformers reports this session's only)."""
    session_steps = trainer.state.global_step - getattr(trainer, "_initial_global_step", 0)
    if trainer.prior_loss_sum is None or trainer.state.global_step == 0:
        return output.training_loss
    return (trainer.prior_loss_sum + output.training_loss * session_steps) / trainer.state.global_step


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
    write_json(out / "eval_history.json", eval_history(log_history))
    from flant5_lib.plots import plot_loss_curves  # matplotlib is in the [train] extra

    plot_loss_curves(log_history, out / "loss_curve.png")


def _throughput(prep: Prepared, padding: dict[str, Any], wall: float) -> dict[str, Any]:
    """Model FLOP/s of the useful (non-pad) tokens, and MFU against the GPU's bf16 peak when it is known."""
    import torch

    from flant5_lib.train.flops import peak_bf16_flops, t5_train_flops

    config = getattr(prep.trainer.accelerator.unwrap_model(prep.trainer.model), "config", None)
    if config is None or not hasattr(config, "d_kv") or wall <= 0:
        return {}
    flops = t5_train_flops(config, padding["source_tokens"], padding["target_tokens"]) / wall
    out: dict[str, Any] = {"model_tflops_per_second": round(flops / 1e12, 3)}
    if not prep.device.use_cpu and torch.cuda.is_available():
        peak = peak_bf16_flops(torch.cuda.get_device_name(0))
        if peak:  # per GPU: the FLOPs above are summed over every process
            out["mfu"] = round(flops / (peak * prep.trainer.args.world_size), 4)
    return out


def finish(prep: Prepared, output: Any, wall: float) -> TrainResult:
    """Pick the best checkpoint, save the model, write the reports, upload; or report where an interrupted run stopped."""
    trainer, params, paths = prep.trainer, prep.params, prep.paths
    padding = trainer.padding_stats()
    metrics: dict[str, Any] = {
        "train_loss": _whole_run_loss(trainer, output),
        "train_loss_this_session": output.training_loss,
        "train_runtime": output.metrics.get("train_runtime", wall),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "train_tokens_per_second": round(padding["real_tokens"] / wall, 1) if wall > 0 else None,
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "resumed_from": str(prep.resume_from) if prep.resume_from else None,
        "num_train_examples": prep.num_train_examples,
        "device": prep.device.description,
        "world_size": trainer.args.world_size,
        **topology(),  # nnodes x nproc_per_node = world_size: what ran, not what was asked for
        "label_smoothing": params.label_smoothing,
        "max_grad_norm": params.max_grad_norm,
        **padding,
    }
    metrics.update(_throughput(prep, padding, wall))
    if prep.preempt.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        ckpt = train_ckpt.newest_complete(paths.checkpoint_dir)
        log.warning("stopped by SIGTERM at step %d; checkpoint %s; run the same command again to resume", trainer.state.global_step, ckpt)
        return TrainResult(paths.model_dir, metrics, list(trainer.state.log_history), interrupted=True, checkpoint=ckpt)

    if prep.has_eval:
        published = _select_best(prep)
        row = next((r for r in reversed(eval_history(trainer.state.log_history)) if r["step"] == published), {})
        metrics.update({
            "selection_split": "validation",  # model selection and early stopping never read the test split
            "metric_for_best_model": trainer.args.metric_for_best_model,
            "best_step": trainer.state.best_global_step, "best_metric": trainer.state.best_metric,
            "published_step": published,
            "early_stopped": trainer.state.global_step < trainer.state.max_steps,
            "eval_rouge_samples": len(trainer.rouge_records),
            **{(k if k.startswith("eval_") else f"eval_{k}"): v for k, v in row.items() if k not in ("step", "epoch")},
        })
    else:  # no validation split or eval_strategy=no: nothing was selected, the last state is published
        metrics.update({"selection_split": None, "published_step": trainer.state.global_step})
    log_history = list(trainer.state.log_history)
    _save_final(trainer, trainer.model, prep.tokenizer, params, paths.model_dir, prep.base_ref, prep.mode)
    if trainer.args.process_index == 0:
        _write_reports(paths.model_dir, metrics, log_history)
        if paths.model_uri:
            from flant5_lib import storage

            storage.upload_dir(paths.model_dir, paths.model_uri)
            log.info("model uploaded to %s", paths.model_uri)
        if paths.tensorboard_uri:
            from flant5_lib.train.trainer import GcsSyncCallback

            GcsSyncCallback(paths.checkpoint_dir, None, paths.tensorboard_dir, paths.tensorboard_uri).sync_tensorboard()
    trainer.accelerator.wait_for_everyone()
    log.info("model saved in %s (train loss %.4f, padding %.1f%%)", paths.model_dir, metrics["train_loss"], 100 * padding["padding_fraction"])
    return TrainResult(paths.model_dir, metrics, log_history, checkpoint=train_ckpt.newest_complete(paths.checkpoint_dir))


def train(params: Params, callbacks: list[Any] | None = None) -> TrainResult:
    """Fine-tune `params.model_name` on `params.dataset`: prepare, fit, finish. `callbacks` are extra
    transformers `TrainerCallback`s (progress hooks, tests that slow a step or inject a fault)."""
    prep = prepare(params, callbacks)
    output, wall = fit(prep)
    return finish(prep, output, wall)


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
