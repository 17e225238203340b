"""Prediction-server throughput and latency: naive (one generate per request) vs micro-batching vs micro-batching +
CTranslate2 int8, each a real `flant5 serve` subprocess called over HTTP by 1, 4, 16 and 32 closed-loop clients.

The model has flan-t5-base's architecture with random weights and every request asks for exactly --tokens new tokens
(min_new_tokens = max_new_tokens), so the figures do not depend on what the weights say.

    .venv/bin/python benchmarks/serve_bench.py --quick      # a few minutes
    .venv/bin/python benchmarks/serve_bench.py              # more requests per level
    .venv/bin/python benchmarks/serve_bench.py --soak       # 60 s at 32 clients: failures and server memory growth

Prints a table, then (last) one JSON line with the ratios at 16 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from flant5_lib.procs import free_port, stop_process, wait_for_http

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / ".cache" / "bench" / "base-arch"
T5_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "t5"
CONFIGS = {
    "naive": ["serve_max_batch_size=1", "serve_backend=hf"],
    "batched": ["serve_max_batch_size=16", "serve_max_wait_ms=10", "serve_backend=hf"],
    "batched+ct2": ["serve_max_batch_size=16", "serve_max_wait_ms=10", "serve_backend=ctranslate2"],
}


def ensure_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        cmd = [sys.executable, "-m", "flant5_lib", "model", "init-tiny", "--size", "base-arch", "--out", str(path)]
        if (T5_TOKENIZER / "tokenizer.json").is_file():
            cmd += ["--tokenizer", str(T5_TOKENIZER)]
        print("building", path, "(flan-t5-base architecture, random weights)...", file=sys.stderr)
        subprocess.run(cmd, check=True)
    return path


class Server:
    """`flant5 serve` in a subprocess, ready once its health route answers 200."""

    def __init__(self, model: Path, settings: list[str], log_dir: Path, name: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "flant5_lib", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--set", "serve_max_instances=64",
               # No 504s in the throughput table: every request is measured to its end (Vertex would cut at 60 s).
               "--set", "serve_deadline_s=900"]
        for s in settings:
            cmd += ["--set", s]
        self.log = (log_dir / f"{name}.log").open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "FLANT5_CACHE_DIR": str(log_dir / "cache")}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def wait_ready(self, timeout: float = 600) -> None:
        wait_for_http(self.base + "/health", timeout_s=timeout, proc=self.proc, on_exit=lambda _: f"; see {self.log.name}")

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30)
        self.log.close()


async def load(base: str, dialogues: list[str], clients: int, per_client: int | None, tokens: int,
               duration: float | None = None) -> dict:
    """Closed loop: each client sends one single-dialogue request after another."""
    latencies: list[float] = []
    failures = 0
    body_params = {"max_new_tokens": tokens, "min_new_tokens": tokens}
    stop_at = time.monotonic() + duration if duration else None

    async def client(cid: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        i = 0
        while (per_client is None or i < per_client) and (stop_at is None or time.monotonic() < stop_at):
            dialogue = dialogues[(cid * 7 + i) % len(dialogues)]
            t = time.perf_counter()
            try:
                r = await http.post(base + "/predict", json={"instances": [dialogue], "parameters": body_params})
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t)
            failures += not ok
            i += 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "failures": failures,
        "rps": (len(lat) - failures) / wall,  # answered requests per second
        "p50_ms": 1000 * statistics.median(lat),
        "p95_ms": 1000 * lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (built once if missing)")
    ap.add_argument("--quick", action="store_true", help="fewer requests per level (a few minutes)")
    ap.add_argument("--soak", action="store_true", help="also run 60 s at 32 clients per config (failures, memory)")
    ap.add_argument("--soak-configs", default="batched,batched+ct2")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per summary (fixed)")
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=1,
                    help="serve_threads for every config (1: this shared 2-core machine, where 2 OpenMP threads thrash; "
                    "0: one per core, for a dedicated VM)")
    args = ap.parse_args(argv)

    from flant5_lib.synthetic import generate_records

    model = ensure_model(args.model)
    dialogues = [r["dialogue"] for r in generate_records(64, seed=123)]
    levels = [int(c) for c in args.clients.split(",")]
    rounds = 1 if args.quick else 3  # requests per client; a lone client sends a few more
    log_dir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results: dict[str, dict[int, dict]] = {}
    soak: dict[str, dict] = {}
    for name in args.configs.split(","):
        server = Server(model, [*CONFIGS[name], f"serve_threads={args.threads}"], log_dir, name)
        try:
            t = time.monotonic()
            server.wait_ready()
            print(f"[{name}] ready in {time.monotonic() - t:.0f} s", file=sys.stderr)
            asyncio.run(load(server.base, dialogues, 2, 2, args.tokens))  # warm-up
            results[name] = {}
            for c in levels:
                per_client = rounds if c > 1 else 3 * rounds
                results[name][c] = r = asyncio.run(load(server.base, dialogues, c, per_client, args.tokens))
                print(f"[{name}] {c:>2} clients: {r['rps']:.2f} req/s p50 {r['p50_ms']:.0f} ms "
                      f"p95 {r['p95_ms']:.0f} ms ({r['requests']} requests, {r['failures']} failed)", file=sys.stderr)
            if args.soak and name in args.soak_configs.split(","):
                rss0 = server.rss()
                r = asyncio.run(load(server.base, dialogues, 32, None, args.tokens, duration=60))
                r["rss_start_mb"], r["rss_end_mb"] = rss0 / 2**20, server.rss() / 2**20
                r["rss_growth_pct"] = 100 * (server.rss() - rss0) / rss0
                soak[name] = r
        finally:
            server.stop()

    print(f"\nmodel: {model.name} (flan-t5-base architecture, random weights); {args.tokens} new tokens per request; "
          f"{os.cpu_count()} CPU cores, serve_threads={args.threads}; {'quick' if args.quick else 'full'} run")
    print(f"{'config':<13}{'clients':>8}{'requests':>10}{'failed':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}")
    for name, by_level in results.items():
        for c, r in by_level.items():
            print(f"{name:<13}{c:>8}{r['requests']:>10}{r['failures']:>8}{r['rps']:>9.2f}{r['p50_ms']:>9.0f}{r['p95_ms']:>9.0f}")
    if soak:
        print(f"\nsoak: 60 s at 32 clients\n{'config':<13}{'requests':>10}{'failed':>8}{'req/s':>9}{'p95 ms':>9}{'RSS start':>11}{'RSS end':>9}{'growth':>8}")
        for name, r in soak.items():
            print(f"{name:<13}{r['requests']:>10}{r['failures']:>8}{r['rps']:>9.2f}{r['p95_ms']:>9.0f}"
                  f"{r['rss_start_mb']:>10.0f}M{r['rss_end_mb']:>8.0f}M{r['rss_growth_pct']:>7.1f}%")

    def ratio(a: str, b: str, key: str, level: int) -> float | None:
        try:
            return round(results[a][level][key] / results[b][level][key], 2)
        except (KeyError, ZeroDivisionError):
            return None

    summary = {
        "batched_vs_naive_speedup": ratio("batched", "naive", "rps", 16),
        "ct2_vs_batched_speedup": ratio("batched+ct2", "batched", "rps", 16),
        "p95_1client_batched_over_naive": ratio("batched", "naive", "p95_ms", 1),
        "p95_1client_ct2_over_naive": ratio("batched+ct2", "naive", "p95_ms", 1),
    }
    if soak:
        summary["soak_failed_requests"] = sum(r["failures"] for r in soak.values())
        summary["soak_max_rss_growth_pct"] = round(max(r["rss_growth_pct"] for r in soak.values()), 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
