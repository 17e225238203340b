"""Where the time of one batch-1 summary goes, on the engine the server picks here (`serve_backend: auto`).

One dialogue at a time, exactly --tokens new tokens, flan-t5-base's architecture (random weights), real SAMSum test
dialogues when ../shared has them. Each summary is split into:

- tokenise: `encode_sources` (the server's own preprocessing) and the id -> token strings CTranslate2 takes;
- encoder: CTranslate2's time to the first token minus one decoder step (the encoder and the cross-attention K/V);
- decoder steps: the time between streamed tokens (`generate_tokens`), median per step, times the steps;
- call overhead: the server's whole `backend.generate` minus the parts above (the batch API, detokenising);

for 1 and 2 threads. What bounds batch 1 shows in the last columns: a decoder step is a handful of [1 x 768]
matrix-vector products per layer, and whether a second thread shortens it.

    .venv/bin/python benchmarks/profile_batch1.py            # about a minute once the model is converted

Prints a table, then (last) one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_bench import DEFAULT_MODEL, ensure_model, load_dialogues  # noqa: E402
from machine import LoadWatch  # noqa: E402


def profile(model: Path, threads: int, dialogues: list[str], tokens: int) -> dict[str, float]:
    from flant5_lib.config import Params
    from flant5_lib.preprocess import encode_sources
    from flant5_lib.serve.backends import load_backend

    params = Params(serve_backend="auto", serve_threads=threads)
    backend = load_backend(model, params, device="cpu")
    if backend.name != "ctranslate2":
        raise SystemExit(f"auto resolved to {backend.name} here; this profile reads CTranslate2's streamed steps")
    tr, tok = backend.translator, backend.tokenizer
    gen = {"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": 1, "do_sample": False}
    rows: dict[str, list[float]] = {k: [] for k in ("tokenise", "first", "step", "total")}
    for i, dialogue in enumerate(dialogues):
        t0 = time.perf_counter()
        ids, _ = encode_sources(tok, [dialogue], params)
        source = tok.convert_ids_to_tokens(ids[0])
        t1 = time.perf_counter()
        stamps = [t1]
        for _ in tr.generate_tokens(source, max_decoding_length=tokens, min_decoding_length=tokens, max_input_length=0):
            stamps.append(time.perf_counter())
        t2 = time.perf_counter()
        backend.generate(ids, gen)  # the server's call, whole
        total = time.perf_counter() - t2 + (t1 - t0)
        if i < 2:  # warm-up
            continue
        steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
        rows["tokenise"].append(t1 - t0)
        rows["first"].append(stamps[1] - stamps[0])
        rows["step"].append(statistics.median(steps))
        rows["total"].append(total)
    med = {k: 1000 * statistics.median(v) for k, v in rows.items()}
    encoder = med["first"] - med["step"]
    decoder = med["step"] * tokens
    return {"threads": threads, "total_ms": med["total"], "tokenise_ms": med["tokenise"], "encoder_ms": encoder,
            "decoder_ms": decoder, "step_ms": med["step"],
            "overhead_ms": med["total"] - med["tokenise"] - encoder - decoder, "dialogues": len(rows["total"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (flan-t5-base shape built once if missing)")
    ap.add_argument("--dialogues", type=int, default=18, help="dialogues profiled (the first two warm up)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per summary (fixed: min = max)")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)

    from flant5_lib.serve.hardware import detect_cpu

    model = ensure_model(args.model)
    dialogues, source = load_dialogues(args.dialogues)
    with LoadWatch() as watch:
        results = [profile(model, int(t), dialogues, args.tokens) for t in args.threads.split(",")]
    print(f"CPU: {detect_cpu().describe()}\nmodel: {model.name} (flan-t5-base architecture, random weights); inputs: "
          f"{source}; one dialogue at a time, exactly {args.tokens} new tokens; medians over "
          f"{results[0]['dialogues']} dialogues\n{watch.line()}")
    print(("NOISY RUN: " if watch.noisy else "") + f"{'threads':>7}{'total ms':>10}{'tokenise':>10}{'encoder':>9}"
          f"{'decoder':>9}{'per step':>10}{'overhead':>10}{'decoder share':>15}")
    for r in results:
        print(f"{r['threads']:>7}{r['total_ms']:>10.1f}{r['tokenise_ms']:>10.1f}{r['encoder_ms']:>9.1f}{r['decoder_ms']:>9.1f}"
              f"{r['step_ms']:>10.2f}{r['overhead_ms']:>10.1f}{r['decoder_ms'] / r['total_ms']:>14.0%}")
    summary = {f"{r['threads']}t": {k: round(v, 2) for k, v in r.items() if k != "threads"} for r in results}
    if len(results) > 1:
        one, two = results[0], results[-1]
        summary["encoder_speedup_2t"] = round(one["encoder_ms"] / two["encoder_ms"], 2)
        summary["decoder_step_speedup_2t"] = round(one["step_ms"] / two["step_ms"], 2)
    print(json.dumps({**summary, **watch.report()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
