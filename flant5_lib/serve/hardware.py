"""What CPU the server runs on, and the engine, threads and kernels that serve fastest there (`serve_backend: auto`).

Why a rule table and not a probe at start-up: timing engines on the serving VM would cost minutes per cold start and
be noisy on a shared host; the rules come from benchmarks/backend_bench.py (README, "CPU inference backends").
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flant5_lib.config import Params

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# CTranslate2 stays on its AVX2 kernels unless told otherwise; these flags are what its AVX-512 kernels need.
AVX512_CORE = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


@dataclass(frozen=True)
class CPUInfo:
    """The parts of a CPU description that decide the engine: vendor, model, usable cores, ISA flags."""

    model: str
    vendor: str
    cores: int
    flags: frozenset[str] = field(default_factory=frozenset)
    machine: str = "x86_64"

    @property
    def isa(self) -> str:
        """The best matrix-multiply instruction set present, as the benchmark table names it."""
        f = self.flags
        if self.machine in ("aarch64", "arm64"):
            return "ARM64 " + ("SVE" if "sve" in f else "NEON")
        for name, needs in (("AMX", {"amx_int8", "amx_bf16"}), ("AVX-512 BF16", {"avx512_bf16"}),
                            ("AVX-512 VNNI", {"avx512_vnni"}), ("AVX-512", AVX512_CORE), ("AVX-VNNI", {"avx_vnni", "avx2"}),
                            ("AVX2", {"avx2", "fma"}), ("AVX", {"avx"})):
            if needs <= f:
                return name
        return "SSE"

    @property
    def has_avx512(self) -> bool:
        return AVX512_CORE <= self.flags

    @property
    def onnx_quantization_isa(self) -> str:
        """Optimum's `AutoQuantizationConfig` recipe for this CPU (the peer in the benchmark)."""
        if self.machine in ("aarch64", "arm64"):
            return "arm64"
        return "avx512_vnni" if "avx512_vnni" in self.flags else "avx512" if self.has_avx512 else "avx2"

    def describe(self) -> str:
        return f"{self.model} ({self.vendor}, {self.cores} usable core(s), best ISA {self.isa})"


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def detect_cpu(cpuinfo: str | None = None, cores: int | None = None) -> CPUInfo:
    """This machine's CPU, or the one `cpuinfo` (a /proc/cpuinfo text) describes: tests pass one in."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:  # not Linux: the model name is all we can tell
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's block describes them all
            fields[key.strip()] = value.strip()
    flags = frozenset((fields.get("flags") or fields.get("Features") or "").split())
    if cores is None:
        cores = usable_cores()
    # x86 kernels list "flags", ARM ones "Features"; with neither, trust the running interpreter.
    machine = "x86_64" if "flags" in fields else "aarch64" if "Features" in fields else platform.machine().lower()
    return CPUInfo(model=fields.get("model name") or platform.processor() or "unknown CPU",
                   vendor=fields.get("vendor_id") or fields.get("CPU implementer") or "unknown",
                   cores=max(1, cores), flags=flags, machine=machine)


@dataclass(frozen=True)
class BackendChoice:
    """The engine to load and how; `reason` is what start-up logs, so an operator sees why."""

    backend: str
    compute_type: str
    threads: int
    env: dict[str, str]
    reason: str
    single: str | None = None  # the engine a lone greedy dialogue goes to instead (auto on a CPU: onnxruntime)

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        also = f", one greedy dialogue on {self.single}" if self.single else ""
        return f"{self.backend} ({self.compute_type}, {self.threads} thread(s){', ' + env if env else ''}{also}): {self.reason}"


def choose_backend(cpu: CPUInfo, params: Params, *, cuda: bool = False, ct2_available: bool | None = None,
                   ort_available: bool | None = None) -> BackendChoice:
    """`serve_backend` and `serve_threads` resolved for `cpu`: an explicit setting always wins, `auto` picks.

    auto: a GPU keeps transformers (bf16/fp32 generate is fast there and CTranslate2's CUDA build is not in the
    serving image); any CPU with CTranslate2 installed gets its host-tuned int8 engine for batches (length-sorted
    sub-batches: 1.7x ONNX Runtime int8 at batch 16, docs/benchmarks.md), and with serve_onnx_single on x86 with
    onnxruntime installed a lone greedy dialogue goes to the project's ONNX Runtime export (its decoder step takes
    about half CTranslate2's time at batch 1, measured on AVX2 and AVX-512 EPYCs; ARM is unmeasured, so it stays on
    CTranslate2 there); without CTranslate2, transformers fp32.
    """
    if ct2_available is None:
        ct2_available = importlib.util.find_spec("ctranslate2") is not None
    if ort_available is None:
        ort_available = importlib.util.find_spec("onnxruntime") is not None
    threads = params.serve_threads or cpu.cores
    requested = params.serve_backend
    if requested == "auto":
        if cuda:
            backend, reason = "hf", "a CUDA GPU is present"
        elif not ct2_available:
            backend, reason = "hf", "ctranslate2 is not installed (pip install 'flant5-lib[serve]')"
        else:
            backend, reason = "ctranslate2", f"CPU with {cpu.isa}: int8 CTranslate2 is the fastest measured engine for batches"
    else:
        backend, reason = requested, "set by serve_backend"
    env: dict[str, str] = {}
    if backend == "ctranslate2" and not cuda and cpu.has_avx512 and "CT2_FORCE_CPU_ISA" not in os.environ:
        env["CT2_FORCE_CPU_ISA"] = "AVX512"  # its default stays on AVX2 kernels even where AVX-512 is present
    single = None
    if (params.serve_onnx_single and requested == "auto" and backend == "ctranslate2" and ort_available
            and cpu.machine in ("x86_64", "amd64")):
        single, reason = "onnxruntime", reason + ", the project's int8 ONNX Runtime export for one dialogue"
    if backend == "onnxruntime" and cuda:
        raise ValueError("serve_backend=onnxruntime runs on a CPU only; use hf or auto on a GPU")
    compute = {"ctranslate2": params.serve_ct2_compute_type, "onnxruntime": ort_compute_type(params)}.get(
        backend, "model dtype" if cuda else "float32")
    return BackendChoice(backend=backend, compute_type=compute, threads=threads, env=env, reason=reason, single=single)


def ort_compute_type(params: Params) -> str:
    """The ONNX Runtime export's type, following serve_ct2_compute_type: float32 stays float32, the rest is int8."""
    return "float32" if params.serve_ct2_compute_type == "float32" else "int8"


def resolve_backend(params: Params, device: str | None = None) -> BackendChoice:
    """`choose_backend` for this machine (the GPU is looked for only when `auto` needs to know), logged once per load:
    the start-up log says which engine serves and why."""
    cuda = bool(device and device.startswith("cuda"))
    if params.serve_backend == "auto" and device in (None, "auto"):
        import torch

        cuda = torch.cuda.is_available()
    cpu = detect_cpu()
    choice = choose_backend(cpu, params, cuda=cuda)
    log.info("CPU: %s; serving backend %s", cpu.describe(), choice.describe())
    return choice
