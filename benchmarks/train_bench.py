"""Training throughput: the classic recipe vs this project's defaults, same model, same dialogues.

(a) classic: every example padded to max_source_length/max_target_length, fp32, random order;
(b) defaults: dynamic padding per batch + length-grouped batches (+ bf16, TF32, fused AdamW on a GPU).
Both go through `flant5_lib.train.train` (the real code path), source length 512. Runs alternate a, b, a, b...
and medians are quoted. The last line is JSON: {"speedup": examples/s of (b) over (a), ...}; on a GPU it adds
real (non-pad) tokens/s and the model FLOP utilisation (flant5_lib.train.flops: encoder-decoder FLOPs of the
useful tokens against the GPU's dense bf16 peak).

    python benchmarks/train_bench.py --quick              # CPU: small T5, real SAMSum dialogues if present
    python benchmarks/train_bench.py --device cuda        # GPU: flan-t5-base architecture, bf16, tokens/s and MFU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("FLANT5_SHARED", REPO.parent / "shared"))



def _training_folder(tmp: Path, n: int) -> tuple[str, str]:
    """A folder whose `train` split is SAMSum's validation split (read at run time, never copied into the repo)."""
    from flant5_lib.data import load_split
    from flant5_lib.fileio import write_jsonl

    samsum = SHARED / "data" / "samsum"
    if (samsum / "original" / "val.json").is_file() or (samsum / "csv" / "samsum-validation.csv").is_file():
        rows = list(load_split(str(samsum), "validation"))
        source = f"SAMSum validation ({len(rows)} dialogues)"
    else:
        from flant5_lib.synthetic import generate_records

        rows = generate_records(max(n, 200), seed=0)
        source = "synthetic (SAMSum not found)"
    rows = (rows * (n // len(rows) + 1))[:n]
    write_jsonl(tmp / "data" / "train.jsonl", rows)
    return str(tmp / "data"), source


def _count_parameters(model_dir: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _one_run(base: dict[str, Any], overrides: dict[str, Any], run_dir: Path) -> dict[str, float]:
    from flant5_lib.config import build_params
    from flant5_lib.train.loop import train

    result = train(build_params({**base, **overrides, "run_dir": str(run_dir)}))
    m = result.metrics
    runtime = m["train_runtime"]
    return {
        "examples_per_s": m["num_train_examples"] * m["epoch"] / runtime,
        "tokens_per_s": m["real_tokens"] / runtime,
        "padding_fraction": m["padding_fraction"],
        "runtime_s": runtime,
        "device": m["device"],
        "tflops": m.get("model_tflops_per_second") or 0.0,
        "mfu": m.get("mfu") or 0.0,  # train() computes it on a GPU whose bf16 peak it knows
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer examples and repeats (a few minutes on 2 CPU cores)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--examples", type=int, help="training dialogues per run (default: 64 quick, 818 full; x8 on cuda)")
    ap.add_argument("--repeats", type=int, help="runs per recipe (default 2 quick, 3 full)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from flant5_lib.modeling import build_tiny_model

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    n = args.examples or ((64 if args.quick else 818) * (8 if cuda else 1))
    repeats = args.repeats or (2 if args.quick else 3)
    size = "base-arch" if cuda else "small"
    tokenizer = SHARED / "tokenizers" / "t5"
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir, source = _training_folder(tmp, n)
        model_dir = build_tiny_model(tmp / "model", tokenizer_dir=str(tokenizer) if (tokenizer / "tokenizer.json").is_file() else None,
                                     size=size)
        n_params = _count_parameters(model_dir)
        base = dict(model_name=str(model_dir), dataset=data_dir, missing_split="skip", eval_strategy="no", num_train_epochs=1,
                    per_device_train_batch_size=args.batch_size, save_steps=100000, logging_steps=50, learning_rate=1e-4,
                    resume="never", seed=0, max_source_length=512, save_every_minutes=None)
        recipes = {
            "classic (pad to max, fp32, random order)": dict(pad_to_max_length=True, group_by_length=False, precision="fp32",
                                                             tf32=False, optim="adamw_torch"),
            "defaults (dynamic padding, length-grouped" + (", bf16)" if cuda else ")"): dict(pad_to_max_length=False,
                                                                                             group_by_length=True, precision="auto"),
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in recipes}
        for r in range(repeats):
            for i, (name, over) in enumerate(recipes.items()):
                t = time.perf_counter()
                results[name].append(_one_run(base, over, tmp / f"run-{r}-{i}"))
                print(f"  run {r + 1}/{repeats} {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("examples_per_s", "tokens_per_s", "padding_fraction", "tflops", "mfu")}
           for k, v in results.items()}
    (a_name, a), (b_name, b) = med.items()
    if cuda:
        gpu = torch.cuda.get_device_name(0)
    print(f"\nTraining throughput, {size} T5 ({n_params / 1e6:.1f}M parameters), {n} dialogues of {source}, "
          f"batch {args.batch_size}, {results[b_name][0]['device']} / {results[a_name][0]['device']}; medians of {repeats} runs")
    header = f"{'recipe':52s} {'examples/s':>11s} {'real tok/s':>11s} {'padding':>8s} {'TFLOP/s':>8s}" + (f" {'MFU':>6s}" if cuda else "")
    print(header)
    print("-" * len(header))
    for name, m in med.items():
        line = f"{name:52s} {m['examples_per_s']:11.1f} {m['tokens_per_s']:11.0f} {100 * m['padding_fraction']:7.1f}% {m['tflops']:8.4g}"
        if cuda:
            line += f" {100 * m['mfu']:5.1f}%" if m["mfu"] else "     ?"
        print(line)
    speedup = b["examples_per_s"] / a["examples_per_s"]
    print(f"{'ratio (b)/(a)':52s} {speedup:11.2f} {b['tokens_per_s'] / a['tokens_per_s']:11.2f}")
    summary: dict[str, Any] = {"speedup": round(speedup, 2), "tokens_per_s_ratio": round(b["tokens_per_s"] / a["tokens_per_s"], 2),
                               "padding_classic": a["padding_fraction"], "padding_defaults": b["padding_fraction"],
                               "device": args.device, "model": size, "examples": n, "repeats": repeats}
    if cuda:
        summary.update(gpu=gpu, tokens_per_s=round(b["tokens_per_s"]), tflops=round(b["tflops"], 2), mfu=b["mfu"] or None,
                       mfu_classic=a["mfu"] or None)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
