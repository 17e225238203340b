"""Training presets and the hardware rules: which machine takes which GPUs, and which region offers them.

Vertex answers an impossible machine/GPU pair only after the job was queued (minutes later); checking
here turns that into one line at once. The table covers the machine families used for Flan-T5. The rule set
(`rules`) and the stand-in (`localstack.checks`) both ask these functions, so they refuse the same hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError
from flant5_lib.vertex.tables import PROJECT_ROOT, load_table

ACCELERATOR_TABLE = PROJECT_ROOT / "params" / "tables" / "accelerators.yaml"

# machine family prefix -> (accelerator type, {machine type: GPU count}). CPU machines have no accelerator.
_GPU_MACHINES: dict[str, tuple[str, dict[str, int]]] = {
    "a2-highgpu": ("NVIDIA_TESLA_A100", {"a2-highgpu-1g": 1, "a2-highgpu-2g": 2, "a2-highgpu-4g": 4, "a2-highgpu-8g": 8}),
    "a2-megagpu": ("NVIDIA_TESLA_A100", {"a2-megagpu-16g": 16}),
    "a2-ultragpu": ("NVIDIA_A100_80GB", {"a2-ultragpu-1g": 1, "a2-ultragpu-2g": 2, "a2-ultragpu-4g": 4, "a2-ultragpu-8g": 8}),
    "a3-highgpu": ("NVIDIA_H100_80GB", {"a3-highgpu-8g": 8}),
    "g2-standard": ("NVIDIA_L4", {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
                                  "g2-standard-24": 2, "g2-standard-32": 1, "g2-standard-48": 4, "g2-standard-96": 8}),
}
# N1 machines take attachable GPUs in these counts.
_N1_GPUS: dict[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
}
_CPU_FAMILIES = ("n1-standard-", "n1-highmem-", "n1-highcpu-", "n2-standard-", "n2-highmem-", "e2-standard-", "e2-highmem-", "c2-standard-")


@dataclass(frozen=True)
class Preset:
    """One training hardware shape; `torchrun` runs when GPUs x replicas > 1."""

    machine_type: str
    accelerator_type: str
    accelerator_count: int
    replica_count: int
    note: str


PRESETS: dict[str, Preset] = {
    "a100-40gb": Preset("a2-highgpu-1g", "NVIDIA_TESLA_A100", 1, 1, "1 x A100 40 GB: flan-t5-base"),
    "a100-80gb": Preset("a2-ultragpu-1g", "NVIDIA_A100_80GB", 1, 1, "1 x A100 80 GB: flan-t5-large"),
    "a100-40gb-x4": Preset("a2-highgpu-4g", "NVIDIA_TESLA_A100", 4, 1, "4 x A100 40 GB on one VM, torchrun DDP"),
    "a100-80gb-x8": Preset("a2-ultragpu-8g", "NVIDIA_A100_80GB", 8, 1, "8 x A100 80 GB on one VM, torchrun FSDP (flan-t5-xl)"),
    "a100-40gb-2x2": Preset("a2-highgpu-2g", "NVIDIA_TESLA_A100", 2, 2, "2 VMs x 2 A100 40 GB, multi-node torchrun"),
    "l4": Preset("g2-standard-8", "NVIDIA_L4", 1, 1, "1 x L4 24 GB: cheap flan-t5-small/base runs"),
    "t4": Preset("n1-standard-8", "NVIDIA_TESLA_T4", 1, 1, "1 x T4 16 GB: fp32 only (no bf16), small models"),
    "cpu": Preset("n1-standard-8", "", 0, 1, "CPU only: smoke tests of the job wiring"),
}


def preset_problem(params: Params) -> str | None:
    """One line when `train_preset` names no preset; None when it is unset or known."""
    name = params.train_preset
    if name and name not in PRESETS:
        return f"train_preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)} (`flant5 vertex presets`)"
    return None


def resolve(params: Params) -> Params:
    """The params with `train_preset` applied: the preset wins over the single machine fields. The one place a
    preset becomes machine fields; idempotent, so every builder of a training job may apply it (one-line error for
    an unknown preset)."""
    problem = preset_problem(params)
    if problem:
        raise CloudError(problem)
    if not params.train_preset:
        return params
    p = PRESETS[params.train_preset]
    return params.with_overrides(train_machine_type=p.machine_type, train_accelerator_type=p.accelerator_type,
                                 train_accelerator_count=p.accelerator_count, train_replica_count=p.replica_count)


def machine_problem(machine_type: str, accelerator_type: str | None, accelerator_count: int, field: str = "train") -> str | None:
    """One line naming the fields when the machine/accelerator pair or the count is impossible; None when valid.

    The same rule answers the rule set (`rules`) and the local stand-in (400 INVALID_ARGUMENT)."""
    acc = accelerator_type or ""
    where = f"{field}_machine_type/{field}_accelerator_type/{field}_accelerator_count"
    for family, (gpu, sizes) in _GPU_MACHINES.items():
        if machine_type.startswith(family + "-"):
            if machine_type not in sizes:
                return f"{field}_machine_type: unknown machine {machine_type!r}; known {family} types: {', '.join(sizes)}"
            if acc != gpu:
                return f"{where}: {machine_type} comes with {gpu}, not {acc or 'no accelerator'}; set {field}_accelerator_type: {gpu}"
            if accelerator_count != sizes[machine_type]:
                return (f"{field}_accelerator_count: {machine_type} has exactly {sizes[machine_type]} x {gpu}, "
                        f"not {accelerator_count}; set {field}_accelerator_count: {sizes[machine_type]}")
            return None
    if machine_type.startswith(_CPU_FAMILIES):
        if not acc and accelerator_count == 0:
            return None
        if acc and accelerator_count == 0:
            return f"{field}_accelerator_count: 0 with {field}_accelerator_type {acc}; set a count or clear the type"
        if not machine_type.startswith("n1-"):
            return f"{where}: {machine_type} takes no accelerator; use an a2-/g2- machine or n1- with T4/V100"
        if acc not in _N1_GPUS:
            return f"{field}_accelerator_type: {acc!r} cannot attach to {machine_type}; choose one of {', '.join(_N1_GPUS)}"
        if accelerator_count not in _N1_GPUS[acc]:
            counts = ", ".join(map(str, _N1_GPUS[acc]))
            return f"{field}_accelerator_count: {acc} attaches to {machine_type} in counts {counts}, not {accelerator_count}"
        return None
    families = ", ".join([*(_GPU_MACHINES), *(f.rstrip("-") for f in _CPU_FAMILIES)])
    return f"{field}_machine_type: unknown machine type {machine_type!r}; known families: {families}"


@lru_cache(maxsize=2)
def load_accelerators(path: str | None = None) -> dict[str, Any]:
    """params/tables/accelerators.yaml: the GPU types each region offers (read on the date the file states)."""
    return load_table(Path(path) if path else ACCELERATOR_TABLE, ("regions", "accelerator_types"),
                      "params/tables/accelerators.yaml")


def offered_in(accelerator_type: str, region: str) -> bool | None:
    """Whether `region` offers this GPU type; None when the table has no row for the region (so it is not checked)."""
    regions: dict[str, list[str]] = load_accelerators()["regions"] or {}
    return accelerator_type in regions[region] if region in regions else None


def regions_offering(accelerator_type: str) -> list[str]:
    return [r for r, accs in (load_accelerators()["regions"] or {}).items() if accelerator_type in accs]
