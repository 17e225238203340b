"""ONNX Runtime engine for one dialogue at a time: the saved model exported once to three graphs, then cached.

Why our own export and not Optimum's: at batch 1 a summary is one encoder pass plus a dozen decoder steps, and each
step is a handful of tiny matrix products, so the per-step overhead decides the latency. Three graphs, traced from
small torch modules written over the checkpoint's own weights (flat tensors in and out, no Cache objects):

    encoder.onnx    input_ids, attention_mask (1, S)       -> hidden (1, S, d)
    cross_kv.onnx   hidden                                  -> cross-attention K and V per layer, once per dialogue
    step.onnx       input_ids (1, 1), position_bias, enc_bias, past self K/V, cross K/V -> logits (1, V), present K/V

The greedy loop binds each step's present K/V as the next step's past through IOBinding (no host copies of the
cache), and the cross K/V once per dialogue. The decoder's relative position bias (a 32-bucket table) is looked up in
numpy. int8: `onnxruntime.quantization.quantize_dynamic` on the weight MatMuls only (attention products stay fp32),
one scale per weight column as CTranslate2 does (one per tensor agreed with fp32 on 48% of greedy SAMSum summaries
against 74%, for 10% more time a step).
Measured in docs/benchmarks.md: a decoder step in about half CTranslate2's time at batch 1, which is why `auto` on a
CPU sends a lone greedy dialogue here and keeps CTranslate2 (length-sorted sub-batches) for everything else.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flant5_lib.errors import ModelError
from flant5_lib.serve.cache import build_once, cache_root, content_hash

log = logging.getLogger(__name__)

EXPORT_FILE = "flant5_onnx.json"  # written last: what was exported, from where, and the graphs' shapes
EXPORT_VERSION = 2  # bump when the graphs below change: an older export is rebuilt, never served
GRAPHS = ("encoder.onnx", "cross_kv.onnx", "step.onnx")
# Greedy decoding is all this engine does; these are the options it serves (neutral ones are never passed in).
SUPPORTED_OPTIONS = frozenset({"max_new_tokens", "min_new_tokens", "num_beams", "do_sample"})


def supports(gen_kwargs: dict[str, Any]) -> bool:
    """Whether this engine decodes `gen_kwargs` exactly as transformers would: greedy, no penalties."""
    return set(gen_kwargs) <= SUPPORTED_OPTIONS and gen_kwargs.get("num_beams", 1) == 1 and not gen_kwargs.get("do_sample")


# export (torch side: runs once per model and version, at load)

# Each graph is one ONNX file, and one protobuf holds at most 2 GiB: float32 weights of up to this many parameters
# (flan-t5-small and base; large and xl would need ONNX external data, which this export does not write).
MAX_PARAMETERS = 2**31 // 4


def parameter_count(model_dir: str | os.PathLike[str]) -> int:
    """The checkpoint's parameter count, from its safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def fits(model_dir: str | os.PathLike[str]) -> bool:
    """Whether `export_model` can write this checkpoint (see MAX_PARAMETERS)."""
    return parameter_count(model_dir) <= MAX_PARAMETERS


def _graph_modules(model: Any) -> tuple[Any, Any, Any]:
    """The encoder, the cross-K/V projection and one decoder step as torch modules over `model`'s weights."""
    import torch
    from torch import nn

    cfg = model.config
    heads_n, dk = cfg.num_heads, cfg.d_kv
    n_layers = len(model.decoder.block)
    scale = cfg.d_model ** -0.5 if getattr(cfg, "scale_decoder_outputs", False) else None

    def rms(ln: Any, x: torch.Tensor) -> torch.Tensor:  # T5's layer norm: no mean, no bias
        return ln.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon))

    def ffn(layer_ff: Any, x: torch.Tensor) -> torch.Tensor:
        d, n = layer_ff.DenseReluDense, rms(layer_ff.layer_norm, x)
        h = d.act(d.wi_0(n)) * d.wi_1(n) if hasattr(d, "wi_0") else d.act(d.wi(n))  # gated (Flan-T5) or not (T5)
        return x + d.wo(h)

    def split(x: torch.Tensor) -> torch.Tensor:  # (1, L, H*dk) -> (1, H, L, dk)
        return x.view(1, -1, heads_n, dk).transpose(1, 2)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) + bias, dim=-1)  # T5: no 1/sqrt(dk)
        return torch.matmul(w, v).transpose(1, 2).reshape(1, -1, heads_n * dk)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = model.encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            enc, x = self.enc, self.enc.embed_tokens(input_ids)
            pos = torch.arange(input_ids.shape[1], dtype=torch.long)
            a0 = enc.block[0].layer[0].SelfAttention
            bucket = a0._relative_position_bucket(pos[None, :] - pos[:, None], bidirectional=True,
                                                  num_buckets=a0.relative_attention_num_buckets,
                                                  max_distance=a0.relative_attention_max_distance)
            bias = a0.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, H, S, S)
            bias = bias + (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
            for blk in enc.block:
                sa, n = blk.layer[0].SelfAttention, rms(blk.layer[0].layer_norm, x)
                x = ffn(blk.layer[1], x + sa.o(attend(split(sa.q(n)), split(sa.k(n)), split(sa.v(n)), bias)))
            return rms(enc.final_layer_norm, x)

    class CrossKV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = model.decoder

        def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out: list[torch.Tensor] = []
            for blk in self.dec.block:
                ca = blk.layer[1].EncDecAttention
                out += [split(ca.k(hidden)), split(ca.v(hidden))]
            return tuple(out)

    class Step(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = model.decoder
            # The LM head as its own (d, V) constant, so quantize_dynamic sees a MatMul with a constant weight.
            self.lm_t = nn.Parameter(model.lm_head.weight.detach().t().contiguous().clone(), requires_grad=False)

        def forward(self, input_ids: torch.Tensor, position_bias: torch.Tensor, enc_bias: torch.Tensor,
                    *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
            past, cross = kv[: 2 * n_layers], kv[2 * n_layers:]
            x, present = self.dec.embed_tokens(input_ids), []
            for i, blk in enumerate(self.dec.block):
                sa, n = blk.layer[0].SelfAttention, rms(blk.layer[0].layer_norm, x)
                k = torch.cat([past[2 * i], split(sa.k(n))], dim=2)
                v = torch.cat([past[2 * i + 1], split(sa.v(n))], dim=2)
                present += [k, v]
                x = x + sa.o(attend(split(sa.q(n)), k, v, position_bias))
                ca, n = blk.layer[1].EncDecAttention, rms(blk.layer[1].layer_norm, x)
                x = ffn(blk.layer[2], x + ca.o(attend(split(ca.q(n)), cross[2 * i], cross[2 * i + 1], enc_bias)))
            x = rms(self.dec.final_layer_norm, x)
            if scale is not None:
                x = x * scale
            return (torch.matmul(x, self.lm_t)[:, 0, :], *present)

    return Encoder().eval(), CrossKV().eval(), Step().eval()


def _names(layers: int) -> tuple[list[str], list[str], list[str]]:
    """Input/output names of the step graph: past self K/V, present self K/V, cross K/V (k, v per layer)."""
    return tuple([f"{kind}_{kv}_{i}" for i in range(layers) for kv in ("k", "v")]  # type: ignore[return-value]
                 for kind in ("past", "present", "cross"))


def _export_graphs(model: Any, dst: Path) -> dict[str, Any]:
    import torch

    cfg = model.config
    heads_n, dk, layers = cfg.num_heads, cfg.d_kv, len(model.decoder.block)
    enc, cross, step = _graph_modules(model)
    past_names, present_names, kv_names = _names(layers)
    src_len, past_len = 7, 3  # example shapes only: every length axis is dynamic
    ids = torch.full((1, src_len), 5, dtype=torch.long)
    mask = torch.ones(1, src_len, dtype=torch.long)
    common: dict[str, Any] = {"dynamo": False, "opset_version": 17, "do_constant_folding": True}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
        torch.onnx.export(enc, (ids, mask), str(dst / "encoder.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], dynamic_axes={"input_ids": {1: "S"}, "attention_mask": {1: "S"},
                                                                 "hidden": {1: "S"}}, **common)
        hidden = enc(ids, mask)
        torch.onnx.export(cross, (hidden,), str(dst / "cross_kv.onnx"), input_names=["hidden"], output_names=kv_names,
                          dynamic_axes={"hidden": {1: "S"}, **{n: {2: "S"} for n in kv_names}}, **common)
        past = [torch.zeros(1, heads_n, past_len, dk) for _ in range(2 * layers)]
        args = (torch.tensor([[5]]), torch.zeros(1, heads_n, 1, past_len + 1), torch.zeros(1, 1, 1, src_len), *past,
                *cross(hidden))
        torch.onnx.export(step, args, str(dst / "step.onnx"),
                          input_names=["input_ids", "position_bias", "enc_bias", *past_names, *kv_names],
                          output_names=["logits", *present_names], **common,
                          dynamic_axes={"position_bias": {3: "T1"}, "enc_bias": {3: "S"}, **{n: {2: "T"} for n in past_names},
                                        **{n: {2: "S"} for n in kv_names}, **{n: {2: "T1"} for n in present_names}})
    a0 = model.decoder.block[0].layer[0].SelfAttention
    return {"layers": layers, "heads": heads_n, "d_kv": dk, "eos": cfg.eos_token_id, "start": cfg.decoder_start_token_id,
            "bias_table": a0.relative_attention_bias.weight.detach().tolist(),  # (buckets, H)
            "max_distance": a0.relative_attention_max_distance}


def export_model(model_dir: str | os.PathLike[str], compute_type: str = "int8") -> Path:
    """Export (and for int8 quantise) a saved HF T5 folder once; later calls reuse the cached graphs.

    Keyed like the CTranslate2 conversion: the model's content, the compute type, onnxruntime's version and
    EXPORT_VERSION. The decoder's position bias is checked against transformers' own before anything is cached.
    """
    import onnxruntime

    src = Path(model_dir)
    if not (src / "config.json").is_file():
        raise ModelError(f"{src}: no config.json; ONNX Runtime exports a saved Hugging Face model folder")
    if compute_type not in ("int8", "float32"):
        raise ModelError(f"ONNX Runtime engine: compute type {compute_type!r}; use int8 or float32")
    if not fits(src):
        raise ModelError(f"{src}: {parameter_count(src) / 1e6:.0f}M parameters, more than the ONNX export's single-file "
                         f"graphs hold ({MAX_PARAMETERS / 1e6:.0f}M); serve this model with serve_backend=ctranslate2 or auto")
    fp = content_hash(src)
    entry = cache_root() / "onnx" / f"{fp}-{compute_type}-ort-{onnxruntime.__version__}-v{EXPORT_VERSION}"

    def build(tmp: Path) -> None:
        from flant5_lib.modeling import load_model_and_tokenizer  # safetensors only

        model, _ = load_model_and_tokenizer(str(src), device="cpu")
        model = model.float().eval()
        fp32 = tmp / "fp32" if compute_type == "int8" else tmp
        fp32.mkdir(exist_ok=True)
        info = _export_graphs(model, fp32)
        _check_bias(model, info)
        if compute_type == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.ERROR))  # the quantizer logs a line per tensor on the root logger
            try:
                for name in GRAPHS:
                    quantize_dynamic(str(fp32 / name), str(tmp / name), per_channel=True, weight_type=QuantType.QInt8,
                                     op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
                    (fp32 / name).unlink()
            finally:
                root.setLevel(level)
            fp32.rmdir()
        info.update(source=str(src.resolve()), fingerprint=fp, compute_type=compute_type,
                    onnxruntime=onnxruntime.__version__, export_version=EXPORT_VERSION)
        (tmp / EXPORT_FILE).write_text(json.dumps(info))
        log.info("exported %s to ONNX (%s) in %s", src, compute_type, entry)

    return build_once(entry, build, complete=EXPORT_FILE)


def decoder_bias(table: Sequence[Sequence[float]], max_distance: int, length: int) -> Any:
    """(H, length) float32: the decoder's self-attention bias for a key `r` positions behind the query, r = 0..length-1
    (T5's unidirectional relative buckets over the checkpoint's (buckets, H) table). Step t's row is [:, t::-1]."""
    import numpy as np

    weights = np.asarray(table, dtype=np.float32)
    buckets = weights.shape[0]
    exact = buckets // 2
    rp = np.arange(length)
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(rp, 1).astype(np.float32) / exact) / math.log(max_distance / exact)
                         * (buckets - exact)).astype(np.int64)
    bucket = np.where(rp < exact, rp, np.minimum(large, buckets - 1))
    return np.ascontiguousarray(weights[bucket].T)


def _check_bias(model: Any, info: dict[str, Any]) -> None:
    """The numpy bias equals transformers' `compute_bias` at a few steps (a checkpoint with another position scheme
    fails here, at load, instead of serving wrong summaries)."""
    import numpy as np

    a0 = model.decoder.block[0].layer[0].SelfAttention
    rows = decoder_bias(info["bias_table"], info["max_distance"], 300)
    for t in (0, 1, 15, 40, 299):
        ref = a0.compute_bias(1, t + 1, past_seen_tokens=t).detach().numpy()[0, :, 0, :]
        if not np.allclose(ref, rows[:, t::-1], rtol=0, atol=1e-6):
            raise ModelError(f"ONNX export: the decoder position bias differs from transformers' at step {t}; "
                             "serve this model with serve_backend=ctranslate2")


# run time (numpy + onnxruntime only)


class OrtBackend:
    """Greedy decoding of one dialogue at a time over the graphs of `export_model`; a batch runs one by one.

    Same inputs (token ids from encode_sources) and the same greedy decoding as `HFBackend`; beam search and penalties
    are refused (`supports`), which the routed `auto` engine leaves to CTranslate2.
    """

    name = "onnxruntime"

    def __init__(self, model_dir: str | os.PathLike[str], compute_type: str = "int8", threads: int = 0) -> None:
        import onnxruntime as ort

        from flant5_lib.modeling import load_tokenizer
        from flant5_lib.serve.hardware import usable_cores

        self.device = "cpu"
        self.compute_type = compute_type
        self.tokenizer = load_tokenizer(str(model_dir))
        self.path = export_model(model_dir, compute_type)
        info = json.loads((self.path / EXPORT_FILE).read_text())
        self.threads = threads or usable_cores()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # its optimizer's notices are not the operator's business
        # Idle pool threads sleep instead of spinning: a spinning worker takes the core the next op needs
        # (benchmarks/profile_batch1.py, 2 cores, flan-t5-base shape: 183 ms a summary against 254 ms spinning).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._ort = ort
        self.encoder, self.cross, self.step = (
            ort.InferenceSession(str(self.path / name), opts, providers=["CPUExecutionProvider"]) for name in GRAPHS)
        self.heads, self.d_kv = info["heads"], info["d_kv"]
        self.eos, self.start = info["eos"], info["start"]
        self.past_names, self.present_names, self.kv_names = _names(info["layers"])
        self._bias_table, self._max_distance = info["bias_table"], info["max_distance"]
        self._bias = decoder_bias(self._bias_table, self._max_distance, 512)
        self._bias_lock = threading.Lock()

    def _bias_rows(self, length: int) -> Any:
        with self._bias_lock:
            if self._bias.shape[1] < length:  # a longer summary than any before: grow the table once
                self._bias = decoder_bias(self._bias_table, self._max_distance, 2 * length)
            return self._bias

    def _greedy(self, source: Sequence[int], max_new_tokens: int, min_new_tokens: int) -> list[int]:
        import numpy as np

        ort, bias = self._ort, self._bias_rows(max_new_tokens)
        x = np.asarray([source], dtype=np.int64)
        hidden = self.encoder.run(["hidden"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        cross = self.cross.run_with_ort_values(self.kv_names, {"hidden": ort.OrtValue.ortvalue_from_numpy(hidden)})
        binding = self.step.io_binding()
        for name, value in zip(self.kv_names, cross):
            binding.bind_ortvalue_input(name, value)
        # Arrays bound from the host stay referenced here until the run that reads them.
        enc_bias = np.zeros((1, 1, 1, x.shape[1]), np.float32)  # batch 1: nothing padded
        binding.bind_cpu_input("enc_bias", enc_bias)
        empty = np.zeros((1, self.heads, 0, self.d_kv), np.float32)
        for name in self.past_names:
            binding.bind_cpu_input(name, empty)
        out: list[int] = []
        token = np.full((1, 1), self.start, np.int64)
        for t in range(max_new_tokens):
            position_bias = np.ascontiguousarray(bias[None, :, None, t::-1])
            binding.bind_cpu_input("input_ids", token)
            binding.bind_cpu_input("position_bias", position_bias)
            binding.bind_output("logits")
            for name in self.present_names:
                binding.bind_output(name)
            self.step.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            logits = outputs[0].numpy()[0]
            if t < min_new_tokens:
                logits[self.eos] = -np.inf
            next_id = int(np.argmax(logits))
            if next_id == self.eos:
                break
            out.append(next_id)
            token[0, 0] = next_id
            for name, value in zip(self.past_names, outputs[1:]):
                binding.bind_ortvalue_input(name, value)
        return out

    def greedy_ids(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int, min_new_tokens: int = 0) -> list[list[int]]:
        """Greedy token ids without the start and end tokens (as `CT2Backend.greedy_ids`)."""
        return [self._greedy(s, max_new_tokens, min_new_tokens) for s in input_ids]

    def generate(self, input_ids: Sequence[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        if not supports(gen_kwargs):
            raise ValueError(f"ONNX Runtime backend: greedy decoding only; unsupported generation options "
                             f"{sorted(set(gen_kwargs) - SUPPORTED_OPTIONS) or ['num_beams/do_sample']}")
        ids = self.greedy_ids(input_ids, gen_kwargs["max_new_tokens"], gen_kwargs.get("min_new_tokens") or 0)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


class RoutedBackend:
    """`auto` on a CPU: a lone greedy dialogue to ONNX Runtime (the lower batch-1 latency), everything else (batches,
    beam search, penalties) to CTranslate2's length-sorted sub-batches (the higher throughput)."""

    name = "ctranslate2+onnxruntime"

    def __init__(self, batch: Any, single: OrtBackend) -> None:
        self.batch, self.single = batch, single
        self.tokenizer, self.device, self.compute_type = batch.tokenizer, batch.device, batch.compute_type

    def pick(self, size: int, gen_kwargs: dict[str, Any]) -> Any:
        return self.single if size == 1 and supports(gen_kwargs) else self.batch

    def generate(self, input_ids: Sequence[Sequence[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        return self.pick(len(input_ids), gen_kwargs).generate(input_ids, gen_kwargs)

    def greedy_ids(self, input_ids: Sequence[Sequence[int]], max_new_tokens: int, min_new_tokens: int = 0) -> list[list[int]]:
        engine = self.pick(len(input_ids), {"max_new_tokens": max_new_tokens})
        return engine.greedy_ids(input_ids, max_new_tokens, min_new_tokens)
