"""`flant5 compare` on the 819 real SAMSum test dialogues: Lead-3 against Longest-3 (no model needed).

Scores both baselines once with `flant5_lib.evaluate.run_baseline` (real rouge_score) into .cache/compare-bench/, then
times reading, aligning and comparing them (1,000 paired bootstrap resamples, 10,000 sign flips) and writing
compare.json, the plot and compare.html, `--repeats` times; reports the median and the load average.

    .venv/bin/python benchmarks/compare_bench.py
    .venv/bin/python benchmarks/compare_bench.py --samples 1000 --permutations 10000 --repeats 5

Prints a table, then (last) one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMSUM = REPO.parent / "shared" / "data" / "samsum" / "original"
CACHE = REPO / ".cache" / "compare-bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (SAMSUM / "test.json").is_file():
        print(f"real SAMSum test split not found in {SAMSUM}", file=sys.stderr)
        return 2

    from flant5_lib import compare as C
    from flant5_lib.config import load_params
    from flant5_lib.evaluate import run_baseline
    from flant5_lib.workbench.compare_page import write_compare

    systems = [CACHE / "eval" / m for m in ("lead3", "longest3")]
    if not all((s / "predictions.jsonl").is_file() for s in systems):
        params = load_params(None, {"dataset": str(SAMSUM), "run_dir": str(CACHE)})
        t0 = time.perf_counter()
        for method in ("lead3", "longest3"):
            run_baseline(params, method, split="test")
        print(f"scored both baselines on the test split in {time.perf_counter() - t0:.1f} s (once, cached)")

    rows = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loaded = C.load_systems(systems)
        t1 = time.perf_counter()
        result = C.compare_systems(loaded, samples=args.samples, permutations=args.permutations)
        t2 = time.perf_counter()
        write_compare(result, CACHE / "compare")
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = [statistics.median(r[i] for r in rows) for i in range(4)]
    m = result["pairs"][0]["metrics"]["rougeL"]
    print(f"{'n':>5} {'resamples':>9} {'flips':>6} {'load s':>7} {'stats s':>8} {'write s':>8} {'total s':>8}")
    print(f"{result['n']:>5} {args.samples:>9} {args.permutations:>6} {med[0]:>7.2f} {med[1]:>8.2f} {med[2]:>8.2f} "
          f"{med[3]:>8.2f}")
    print(f"rougeL longest3 - lead3 {m['diff']:+.2f}: paired CI {m['ci'][0]:+.2f} to {m['ci'][1]:+.2f}, unpaired "
          f"{m['unpaired_ci'][0]:+.2f} to {m['unpaired_ci'][1]:+.2f}, p = {m['p_value']:.4f}")
    print(json.dumps({"n": result["n"], "samples": args.samples, "permutations": args.permutations,
                      "median_seconds": {"load": round(med[0], 3), "stats": round(med[1], 3), "write": round(med[2], 3),
                                         "total": round(med[3], 3)},
                      "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                      "machine": platform.machine(), "python": platform.python_version()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
