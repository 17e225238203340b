"""Decisions taken before training starts: where outputs go, which precision/optimiser/engine, LoRA.

Every bad combination is found here, before a model or dataset is loaded, and raised as one
`ParamsError`/`ModelError` line, so a GPU job fails in seconds instead of after the data is tokenised.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.errors import ModelError, ParamsError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

# Vertex AI custom jobs pass these; any of them may be a gs:// URI.
ENV_MODEL_DIR = "AIP_MODEL_DIR"
ENV_CHECKPOINT_DIR = "AIP_CHECKPOINT_DIR"
ENV_TENSORBOARD_DIR = "AIP_TENSORBOARD_LOG_DIR"


@dataclass(frozen=True)
class RunPaths:
    """Local folders training writes into, and the gs:// URIs they are mirrored to (None: nothing to sync)."""

    model_dir: Path
    checkpoint_dir: Path
    tensorboard_dir: Path
    model_uri: str | None = None
    checkpoint_uri: str | None = None
    tensorboard_uri: str | None = None


def _local_or_remote(env: str, default: Path) -> tuple[Path, str | None]:
    value = os.environ.get(env, "").strip()
    if not value:
        return default, None
    if value.startswith("gs://"):
        return default, value.rstrip("/")
    return Path(value).expanduser().resolve(), None


def resolve_paths(params: Params) -> RunPaths:
    """<run_dir>/{model,checkpoints,tensorboard}, or the AIP_* folders when Vertex sets them."""
    run_dir = Path(params.run_dir).expanduser().resolve()
    model_dir, model_uri = _local_or_remote(ENV_MODEL_DIR, run_dir / "model")
    ckpt_dir, ckpt_uri = _local_or_remote(ENV_CHECKPOINT_DIR, run_dir / "checkpoints")
    tb_dir, tb_uri = _local_or_remote(ENV_TENSORBOARD_DIR, run_dir / "tensorboard")
    return RunPaths(model_dir, ckpt_dir, tb_dir, model_uri, ckpt_uri, tb_uri)


def world_size() -> int:
    """Processes in this job (torchrun sets WORLD_SIZE before the interpreter starts)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def topology() -> dict[str, int]:
    """{"nnodes", "nproc_per_node"} of this job, as torchrun sets them (GROUP_WORLD_SIZE, LOCAL_WORLD_SIZE)."""
    def env_int(name: str) -> int:
        try:
            return max(1, int(os.environ.get(name, "1")))
        except ValueError:
            return 1

    return {"nnodes": env_int("GROUP_WORLD_SIZE"), "nproc_per_node": env_int("LOCAL_WORLD_SIZE")}


def cpu_supports_bf16() -> bool:
    """torch's own check (oneDNN bf16 kernels: AVX512-BF16/AMX); isolated so tests can stand in a CPU without it."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class DeviceChoice:
    """What the Trainer is told: device kind, precision, optimiser, TF32, dataloader pinning."""

    use_cpu: bool
    bf16: bool
    optim: str
    tf32: bool | None
    pin_memory: bool
    description: str


def choose_device(params: Params) -> DeviceChoice:
    """Sane defaults per device: bf16 + fused AdamW + TF32 on recent GPUs, fp32 + plain AdamW on CPU.

    fp16 is never used: T5 was pre-trained in bf16 and its activations overflow fp16 (NaN losses).
    """
    import torch

    cuda = torch.cuda.is_available()
    if params.precision == "fp16":  # Params already refuses it; kept so no path can turn it on.
        raise ParamsError("precision: fp16 overflows in T5 (NaN losses); use 'bf16' or 'fp32'")
    if cuda:
        bf16_ok = torch.cuda.is_bf16_supported()
        if params.precision == "bf16" and not bf16_ok:
            raise ParamsError(
                f"precision: bf16 is not supported by {torch.cuda.get_device_name(0)} (needs Ampere or newer); "
                "set precision=fp32"
            )
        bf16 = params.precision == "bf16" or (params.precision == "auto" and bf16_ok)
        ampere = torch.cuda.get_device_capability(0)[0] >= 8
        tf32 = params.tf32 if ampere else None
        optim = "adamw_torch_fused" if params.optim == "auto" else params.optim
        name = torch.cuda.get_device_name(0)
        desc = f"cuda ({name}), {'bf16' if bf16 else 'fp32'}{', tf32' if tf32 else ''}, {optim}"
        return DeviceChoice(False, bf16, optim, tf32, True, desc)
    if params.precision == "bf16" and not cpu_supports_bf16():
        raise ParamsError(
            "precision: bf16 was asked for but this CPU has no bf16 kernels (torch.ops.mkldnn reports none); "
            "set precision=fp32 or precision=auto"
        )
    bf16 = params.precision == "bf16"  # 'auto' stays fp32 on CPU: bf16 autocast is slower on most CPUs
    optim = "adamw_torch" if params.optim == "auto" else params.optim
    return DeviceChoice(True, bf16, optim, None, False, f"cpu, {'bf16' if bf16 else 'fp32'}, {optim}")


def check_distributed(params: Params) -> str:
    """'single', 'ddp' or 'fsdp'; FSDP with one process is a mistake worth one line."""
    n = world_size()
    if params.distributed == "fsdp":
        if n < 2:
            raise ParamsError(
                "distributed: fsdp shards the model over several processes but this run has one; launch with "
                "`torchrun --nproc_per_node=N -m flant5_lib.train ...` or set distributed=auto"
            )
        if params.lora:
            raise ParamsError("distributed: fsdp with lora=true is not supported here; use distributed=ddp for LoRA")
        import torch

        if not torch.cuda.is_available():  # accelerate only shards on GPUs; on CPU it falls back to DDP
            log.warning("distributed=fsdp: no GPU, so accelerate runs plain DDP (every process holds the whole model)")
        return "fsdp"
    return "ddp" if n > 1 else "single"


def fsdp_arguments(model_name: str) -> dict[str, Any]:
    """TrainingArguments for FSDP2: each T5 block is one shard unit (the way large/xl fit in memory)."""
    return {
        "fsdp": True,
        "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["T5Block"], "reshard_after_forward": True},
    }


# --- LoRA ---------------------------------------------------------------------------------------


def module_leaf_names(model: PreTrainedModel) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def apply_lora(model: PreTrainedModel, params: Params) -> PreTrainedModel:
    """Wrap the model in PEFT LoRA adapters on `lora_target_modules`; every name must exist in the model."""
    from peft import LoraConfig, TaskType, get_peft_model

    names = module_leaf_names(model)
    missing = [t for t in params.lora_target_modules if t not in names]
    if missing:
        linear = sorted({n for n, m in model.named_modules() if type(m).__name__ == "Linear" for n in [n.rsplit(".", 1)[-1]]})
        raise ModelError(
            f"lora_target_modules: {', '.join(missing)} not found in {type(model).__name__} "
            f"(its linear layers are named {', '.join(linear) or 'nothing'}); fix lora_target_modules"
        )
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=list(params.lora_target_modules),
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA on %s: %.2fM of %.1fM parameters trainable", ",".join(params.lora_target_modules), trainable / 1e6, total / 1e6)
    return peft_model


def model_fingerprint(model: PreTrainedModel, params: Params) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed into this model (shape, vocabulary, LoRA layout)."""
    cfg = getattr(model, "config", None)
    keys = ("model_type", "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads")
    fp: dict[str, Any] = {k: getattr(cfg, k, None) for k in keys}
    fp["lora"] = params.lora
    if params.lora:
        fp["lora_r"] = params.lora_r
        fp["lora_target_modules"] = sorted(params.lora_target_modules)
    return fp
