"""Where the time of one batch-1 summary goes, on each engine `serve_backend: auto` can send a lone dialogue to.

One dialogue at a time, exactly --tokens new tokens, flan-t5-base's architecture (random weights), real SAMSum test
dialogues when ../shared has them. The engines, loaded as the server loads them (`serve.backends.load_backend`):

- onnxruntime: the project's int8 ONNX Runtime export, what `auto` serves a lone greedy dialogue with on x86;
- ctranslate2: int8 CTranslate2, host-tuned, what `auto` serves batches with (and a lone dialogue elsewhere).

Each summary is split the same way for both, from three timed calls per dialogue (best of --reps, interleaved so a
shared machine's noise hits both alike):

- tokenise: `encode_sources` (the server's own preprocessing);
- decoder step: (a `tokens`-token greedy call - a 1-token call) / (tokens - 1);
- encoder: the 1-token call minus one step (the encoder and the cross-attention K/V);
- call overhead: the server's whole `backend.generate` (detokenising included) minus the parts above;

for 1 and 2 threads. What bounds batch 1 shows in the last columns: a decoder step is a handful of [1 x 768]
matrix-vector products per layer, and whether a second thread shortens it. Last, the memory bound: a step at batch 1
reads every decoder weight once (118 MiB of int8 for flan-t5-base), so the machine's read bandwidth, measured on the
same threads, sets a floor under the step that no engine can go below.

    .venv/bin/python benchmarks/profile_batch1.py            # a few minutes once the model is exported

Prints a table, then (last) one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_bench import DEFAULT_MODEL, ensure_model, load_dialogues  # noqa: E402
from machine import LoadWatch  # noqa: E402

ENGINES = ("onnxruntime", "ctranslate2")


def _timed(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def profile(model: Path, threads: int, dialogues: list[str], tokens: int, reps: int) -> dict[str, dict[str, float]]:
    from flant5_lib.config import Params
    from flant5_lib.preprocess import encode_sources
    from flant5_lib.serve.backends import load_backend

    params = Params(serve_threads=threads)
    engines = {name: load_backend(model, params.with_overrides(serve_backend=name), device="cpu") for name in ENGINES}
    tok = engines["ctranslate2"].tokenizer
    gen = {"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": 1, "do_sample": False}
    rows: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ("tokenise", "one", "full", "total")} for n in ENGINES}
    for i, dialogue in enumerate(dialogues):
        best: dict[str, dict[str, float]] = {n: {} for n in ENGINES}
        for rep in range(reps):
            for name in ENGINES[rep % 2:] + ENGINES[: rep % 2]:
                e = engines[name]
                time.sleep(0.02)  # the other engine's spinning threads go idle first
                t0 = time.perf_counter()
                ids, _ = encode_sources(tok, [dialogue], params)
                took = {"tokenise": time.perf_counter() - t0, "one": _timed(e.greedy_ids, ids, 1, 1)}
                # the ids call and the server's whole call swap places each repetition: neither always goes first
                calls = [("full", e.greedy_ids, (ids, tokens, tokens)), ("total", e.generate, (ids, gen))]
                for key, fn, call_args in calls[rep % 2:] + calls[: rep % 2]:
                    took[key] = _timed(fn, *call_args)
                took["total"] += took["tokenise"]
                for k, v in took.items():
                    best[name][k] = min(v, best[name].get(k, v))
        if i < 2:  # warm-up
            continue
        for name in ENGINES:
            for k, v in best[name].items():
                rows[name][k].append(v)
    out = {}
    for name in ENGINES:
        med = {k: 1000 * statistics.median(v) for k, v in rows[name].items()}
        step = (med["full"] - med["one"]) / (tokens - 1)
        encoder = med["one"] - step
        out[name] = {"threads": threads, "total_ms": med["total"], "tokenise_ms": med["tokenise"], "encoder_ms": encoder,
                     "decoder_ms": step * tokens, "step_ms": step,
                     "overhead_ms": med["total"] - med["tokenise"] - med["full"], "dialogues": len(rows[name]["total"])}
    return out


def step_weight_bytes(model: Path) -> int:
    """Bytes of int8 weights one decoder step reads: every decoder product (the cross-attention K/V ones run once per
    dialogue, not per step) and the LM head, one byte per weight. Norms, biases and the one embedding row are noise."""
    from safetensors import safe_open

    total = 0
    for path in model.glob("*.safetensors"):
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                per_step = name.startswith(("decoder.block.", "lm_head.")) and name.endswith(".weight")
                if per_step and not any(k in name for k in ("EncDecAttention.k.", "EncDecAttention.v.", "layer_norm",
                                                             "relative_attention_bias")):
                    total += math.prod(f.get_slice(name).get_shape())
    return total


def read_bandwidth(threads: int, nbytes: int, reps: int = 7) -> float:
    """Bytes per second this machine streams from memory: the best of `reps` sums over a buffer of `nbytes`, far
    larger than any cache (float32 `torch.sum` on `threads` threads: it only reads, so memory bounds it)."""
    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(nbytes // 4, dtype=torch.float32)
    best = min(_timed(torch.sum, buf) for _ in range(reps))
    return nbytes / best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (flan-t5-base shape built once if missing)")
    ap.add_argument("--dialogues", type=int, default=18, help="dialogues profiled (the first two warm up)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per summary (fixed: min = max)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per dialogue and engine, best kept (default 2)")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)

    from flant5_lib.serve.hardware import detect_cpu

    model = ensure_model(args.model)
    dialogues, source = load_dialogues(args.dialogues)
    with LoadWatch() as watch:
        results = [profile(model, int(t), dialogues, args.tokens, args.reps) for t in args.threads.split(",")]
    print(f"CPU: {detect_cpu().describe()}\nmodel: {model.name} (flan-t5-base architecture, random weights); inputs: "
          f"{source}; one dialogue at a time, exactly {args.tokens} new tokens; medians over "
          f"{results[0]['ctranslate2']['dialogues']} dialogues of the best of {args.reps}\n{watch.line()}")
    print(("NOISY RUN: " if watch.noisy else "") + f"{'engine':<13}{'threads':>7}{'total ms':>10}{'tokenise':>10}"
          f"{'encoder':>9}{'decoder':>9}{'per step':>10}{'overhead':>10}{'decoder share':>15}")
    summary: dict[str, Any] = {}
    for by_engine in results:
        for name, r in by_engine.items():
            print(f"{name:<13}{r['threads']:>7}{r['total_ms']:>10.1f}{r['tokenise_ms']:>10.1f}{r['encoder_ms']:>9.1f}"
                  f"{r['decoder_ms']:>9.1f}{r['step_ms']:>10.2f}{r['overhead_ms']:>10.1f}{r['decoder_ms'] / r['total_ms']:>14.0%}")
            summary[f"{name}_{r['threads']}t"] = {k: round(v, 2) for k, v in r.items() if k != "threads"}
    for by_engine in results:
        ort, ct2 = by_engine["onnxruntime"], by_engine["ctranslate2"]
        t = ort["threads"]
        summary[f"ct2_over_ort_{t}t"] = {"total": round(ct2["total_ms"] / ort["total_ms"], 2),
                                         "step": round(ct2["step_ms"] / ort["step_ms"], 2),
                                         "encoder": round(ct2["encoder_ms"] / ort["encoder_ms"], 2)}
        print(f"{t} thread(s): CTranslate2 / ONNX Runtime = {summary[f'ct2_over_ort_{t}t']['total']:.2f}x whole summary, "
              f"{summary[f'ct2_over_ort_{t}t']['step']:.2f}x per step, {summary[f'ct2_over_ort_{t}t']['encoder']:.2f}x encoder")
    # What bounds a step: at batch 1 each step streams every decoder weight from memory once.
    weights = step_weight_bytes(model)
    print(f"\nmemory bound of a decoder step: {weights / 2**20:.0f} MiB of int8 weights per step")
    for by_engine in results:
        t = by_engine["onnxruntime"]["threads"]
        bw = read_bandwidth(t, max(4 * weights, 2**29))
        floor_ms = 1000 * weights / bw
        summary[f"memory_{t}t"] = {"read_gb_s": round(bw / 1e9, 1), "step_floor_ms": round(floor_ms, 2),
                                   **{f"{n}_step_over_floor": round(r["step_ms"] / floor_ms, 2) for n, r in by_engine.items()}}
        print(f"{t} thread(s): reads {bw / 1e9:.1f} GB/s, so a step takes at least {floor_ms:.2f} ms; "
              + ", ".join(f"{n} {r['step_ms'] / floor_ms:.1f}x that" for n, r in by_engine.items()))
    summary["step_weight_mib"] = round(weights / 2**20)
    print(json.dumps({**summary, **watch.report()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
