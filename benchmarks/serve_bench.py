"""Prediction-server throughput and latency: naive (one generate per request) vs micro-batching vs micro-batching +
CTranslate2 int8 vs the default (`auto`: on x86 a lone dialogue on ONNX Runtime, batches on CTranslate2), each a
real `flant5 serve` subprocess called over HTTP by 1, 4 and 16 closed-loop clients.

The model has flan-t5-base's architecture with random weights and every request asks for exactly --tokens new tokens
(min_new_tokens = max_new_tokens), so the figures do not depend on what the weights say.

    .venv/bin/python benchmarks/serve_bench.py --quick      # a few minutes
    .venv/bin/python benchmarks/serve_bench.py              # more requests per level
    .venv/bin/python benchmarks/serve_bench.py --soak       # 60 s at 32 clients: failures and server memory growth
    .venv/bin/python benchmarks/serve_bench.py --overload --large-payload --configs batched+ct2 --clients 16 --quick

--overload: capacity first (closed loop, 16 clients, the real serve_deadline_s), then open-loop arrivals at twice that
rate for 30 s (--quick: 15 s): goodput against capacity, rejection rate, p50/p95 of accepted requests, time to reject,
deadline hits. --large-payload: 8 clients send 1.4 MB requests for 20 s (--quick: 10 s) while /health is probed every
50 ms: its p50/p99 against the same probe on the idle server.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadWatch  # noqa: E402  benchmarks/machine.py: the one rule for a noisy run

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / ".cache" / "bench" / "base-arch"
T5_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "t5"
# Every config admits 64 queued dialogues, so no closed loop here (16 clients at most) is ever shed: a ratio compares
# servers that answered every request, never a server that said 429 to most of them (the naive server's own default
# queue, 4 x its batch of 1, sheds at 16 clients).
CONFIGS = {
    "naive": ["serve_max_batch_size=1", "serve_backend=hf", "serve_max_queue_dialogues=64"],
    "batched": ["serve_max_batch_size=16", "serve_max_wait_ms=10", "serve_backend=hf"],
    "batched+ct2": ["serve_max_batch_size=16", "serve_max_wait_ms=10", "serve_backend=ctranslate2"],
    # The default: auto (on x86, a lone dialogue on the project's ONNX Runtime export, batches on CTranslate2).
    "batched+auto": ["serve_max_batch_size=16", "serve_max_wait_ms=10", "serve_backend=auto"],
}


def ensure_model(path: Path, size: str = "base-arch") -> Path:
    if not (path / "config.json").is_file():
        cmd = [sys.executable, "-m", "flant5_lib", "model", "init-tiny", "--size", size, "--out", str(path)]
        if size == "base-arch" and (T5_TOKENIZER / "tokenizer.json").is_file():
            cmd += ["--tokenizer", str(T5_TOKENIZER)]
        print("building", path, f"({size} model, random weights)...", file=sys.stderr)
        subprocess.run(cmd, check=True)
    return path


class Server:
    """`flant5 serve` in a subprocess, ready once its health route answers 200."""

    def __init__(self, model: Path, settings: list[str], log_dir: Path, name: str, deadline_s: float = 900) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "flant5_lib", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(self.port), "--set", "serve_max_instances=64",
               # No 504s in the throughput table: every request is measured to its end (Vertex would cut at 60 s).
               "--set", f"serve_deadline_s={deadline_s:g}"]
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
    server: list[float] = []  # the server's own time for each answered request (Server-Timing)
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
                if ok:
                    server.append(_server_seconds(r))
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
        "server_p50_ms": 1000 * statistics.median(server) if server else float("nan"),
        "mean_ms": 1000 * statistics.fmean(lat),
        "wall_s": wall,
    }


def bare_engine_ms(model: Path, settings: list[str], threads: int, dialogues: list[str], tokens: int) -> float:
    """Median ms of the server's own engine call for one dialogue (encode + backend.generate + decode), loaded as the
    server loads it but called in this process with no HTTP: the floor the server's 1-client p50 is set against."""
    from flant5_lib.config import Params
    from flant5_lib.preprocess import encode_sources
    from flant5_lib.serve.backends import load_backend

    overrides = dict(s.split("=", 1) for s in settings if s.startswith("serve_backend="))
    params = Params(serve_threads=threads, **overrides)
    backend = load_backend(model, params, device="cpu")
    gen = {"max_new_tokens": tokens, "min_new_tokens": tokens, "num_beams": 1, "do_sample": False}
    times = []
    for i, dialogue in enumerate(dialogues[:18]):
        t = time.perf_counter()
        ids, _ = encode_sources(backend.tokenizer, [dialogue], params)
        backend.generate(ids, gen)
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t)
    del backend
    return 1000 * statistics.median(times)


def engine_seconds(base: str) -> tuple[float, float]:
    """(sum, count) of the server's own engine calls so far (`flant5_batch_duration_seconds` on /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {s.name: s.value for f in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=30).text)
             for s in f.samples if s.name.startswith("flant5_batch_duration_seconds_")}
    return found.get("flant5_batch_duration_seconds_sum", 0.0), found.get("flant5_batch_duration_seconds_count", 0.0)


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")


async def open_loop(base: str, dialogues: list[str], rate: float, duration: float, tokens: int) -> dict:
    """Requests arrive at `rate` per second whatever happens to earlier ones (as traffic does), for `duration` s."""
    results: list[tuple[int, float]] = []
    server_reject: list[float] = []  # the server's own time for each refusal (Server-Timing), without client lag
    body_params = {"max_new_tokens": tokens, "min_new_tokens": tokens}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def one(i: int) -> None:
            t = time.perf_counter()
            try:
                r = await http.post(base + "/predict", json={"instances": [dialogues[i % len(dialogues)]], "parameters": body_params})
                status = r.status_code
                if status in (429, 503):
                    server_reject.append(_server_seconds(r))
            except httpx.HTTPError:
                status = 0
            results.append((status, time.perf_counter() - t))

        start = time.perf_counter()
        tasks, i = [], 0
        while (now := time.perf_counter() - start) < duration:
            while i < rate * now:
                tasks.append(asyncio.create_task(one(i)))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    ok = [t for s, t in results if s == 200]
    shed = [t for s, t in results if s in (429, 503)]
    return {
        "sent": len(results), "ok": len(ok), "rejected": len(shed),
        "deadline": sum(s == 504 for s, _ in results), "other": sum(s not in (200, 429, 503, 504) for s, _ in results),
        "goodput_rps": len(ok) / wall, "offered_rps": len(results) / duration,
        "ok_p50_ms": 1000 * _pct(ok, 0.5), "ok_p95_ms": 1000 * _pct(ok, 0.95),
        "reject_p50_ms": 1000 * _pct(shed, 0.5), "reject_p95_ms": 1000 * _pct(shed, 0.95),
        "reject_max_ms": 1000 * max(shed, default=float("nan")),
        "server_reject_p50_ms": 1000 * _pct(server_reject, 0.5), "server_reject_p95_ms": 1000 * _pct(server_reject, 0.95),
    }


def _server_seconds(r: httpx.Response) -> float:
    """The `app;dur=MS` of the server's Server-Timing header, in seconds."""
    return float(r.headers.get("server-timing", "app;dur=nan").split("dur=")[1]) / 1000


async def burst(base: str, dialogues: list[str], n: int) -> dict:
    """The audit's overload: `n` requests at once, each 64 dialogues x 256 new tokens (min = max)."""
    body = {"instances": [dialogues[i % len(dialogues)] for i in range(64)],
            "parameters": {"max_new_tokens": 256, "min_new_tokens": 256}}
    results: list[tuple[int, float]] = []
    server_reject: list[float] = []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n + 4)) as http:

        async def one() -> None:
            t = time.perf_counter()
            try:
                r = await http.post(base + "/predict", json=body)
                status = r.status_code
                if status in (429, 503):
                    server_reject.append(_server_seconds(r))
            except httpx.HTTPError:
                status = 0
            results.append((status, time.perf_counter() - t))

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - start
    ok = [t for s, t in results if s == 200]
    shed = [t for s, t in results if s in (429, 503)]
    return {"sent": n, "ok": len(ok), "rejected": len(shed), "deadline": sum(s == 504 for s, _ in results),
            "other": sum(s not in (200, 429, 503, 504) for s, _ in results), "wall_s": wall,
            "ok_p95_ms": 1000 * _pct(ok, 0.95), "reject_p95_ms": 1000 * _pct(shed, 0.95),
            "reject_max_ms": 1000 * max(shed, default=float("nan")), "server_reject_p95_ms": 1000 * _pct(server_reject, 0.95)}


async def health_probe(base: str, seconds: float, big: bytes | None, clients: int = 8) -> dict:
    """/health every 50 ms for `seconds`, while `clients` send `big` request bodies back to back (when given)."""
    probes: list[float] = []
    answered = failed = 0
    stop_at = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=120) as http:

        async def sender() -> None:
            nonlocal answered, failed
            while time.monotonic() < stop_at:
                r = await http.post(base + "/predict", content=big, headers={"content-type": "application/json"})
                answered += r.status_code == 200
                failed += r.status_code != 200

        senders = [asyncio.create_task(sender()) for _ in range(clients if big else 0)]
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            await http.get(base + "/health")
            probes.append(time.perf_counter() - t)
            await asyncio.sleep(0.05)
        await asyncio.gather(*senders)
    return {"probes": len(probes), "p50_ms": 1000 * _pct(probes, 0.5), "p99_ms": 1000 * _pct(probes, 0.99),
            "max_ms": 1000 * max(probes), "big_answered": answered, "big_failed": failed}


def big_body(size: int = 1_400_000) -> bytes:
    """One instance of realistic text, about `size` bytes of JSON (Vertex's limit is 1.5 MB)."""
    from flant5_lib.synthetic import generate_records

    text, parts = "", [r["dialogue"] for r in generate_records(64, seed=7)]
    while len(text) < size - 100:
        text += "\n".join(parts) + "\n"
    return json.dumps({"instances": [text[: size - 100]], "parameters": {"max_new_tokens": 4}}).encode()


def pressure(args: argparse.Namespace, model: Path, dialogues: list[str], log_dir: Path) -> dict:
    """The overload and large-payload modes, on one server with the real deadline."""
    out: dict = {}
    name = args.pressure_config
    server = Server(model, [*CONFIGS[name], f"serve_threads={args.threads}"], log_dir, f"{name}-pressure", deadline_s=55)
    try:
        server.wait_ready()
        asyncio.run(load(server.base, dialogues, 2, 2, args.tokens))  # warm-up
        if args.overload:
            cap = asyncio.run(load(server.base, dialogues, 16, None, args.tokens, duration=15 if args.quick else 30))
            print(f"[{name}] capacity (16 closed-loop clients): {cap['rps']:.2f} req/s, {cap['failures']} failed", file=sys.stderr)
            time.sleep(2)  # let the queue drain
            over = asyncio.run(open_loop(server.base, dialogues, 2 * cap["rps"], 15 if args.quick else 30, args.tokens))
            over["capacity_rps"] = cap["rps"]
            out["overload"] = over
            print(f"[{name}] overload: {over}", file=sys.stderr)
        if args.burst:
            out["burst"] = b = asyncio.run(burst(server.base, dialogues, args.burst))
            print(f"[{name}] burst: {b}", file=sys.stderr)
        if args.large_payload:
            seconds = 10 if args.quick else 20
            idle = asyncio.run(health_probe(server.base, 5, None))
            loaded = asyncio.run(health_probe(server.base, seconds, big_body()))
            out["large_payload"] = {"idle": idle, "loaded": loaded}
            print(f"[{name}] /health idle {idle} loaded {loaded}", file=sys.stderr)
    finally:
        server.stop()
    if args.fuzz:
        # The fuzz is about HTTP and validation, not generation: the tiny model and small limits keep 1,000 cases short.
        tiny = ensure_model(model.parent / "tiny", size="tiny")
        server = Server(tiny, ["serve_max_new_tokens_limit=16", "serve_max_beams_limit=2", "serve_max_instances=8"],
                        log_dir, "fuzz", deadline_s=55)
        try:
            server.wait_ready()
            out["fuzz"] = fuzz(server.base, args.fuzz)
            print(f"fuzz: {out['fuzz']}", file=sys.stderr)
        finally:
            server.stop()
    return out


def fuzz(base: str, cases: int) -> dict:
    """Schemathesis cases generated from the server's own /openapi.json, valid and invalid: counts by status."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    posts = [op for op in operations if op.method.upper() == "POST"]
    for operation in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation in posts else [])
        for mode in modes:
            share = max(10, cases // (2 * len(posts))) if operation in posts else 10

            @settings(max_examples=share, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def one(case) -> None:
                code = case.call(base_url=base, timeout=120).status_code
                statuses[code] = statuses.get(code, 0) + 1

            one()
    return {"cases": sum(statuses.values()), "server_errors": sum(n for c, n in statuses.items() if c >= 500),
            "by_status": dict(sorted(statuses.items()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (built once if missing)")
    ap.add_argument("--quick", action="store_true", help="fewer requests per level (a few minutes)")
    ap.add_argument("--soak", action="store_true", help="also run 60 s at 32 clients per config (failures, memory)")
    ap.add_argument("--soak-configs", default="batched,batched+ct2")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per summary (fixed)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level (at least; --quick: 16)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=1,
                    help="serve_threads for every config (1: this shared 2-core machine, where 2 OpenMP threads thrash; "
                    "0: one per core, for a dedicated VM)")
    ap.add_argument("--overload", action="store_true", help="twice the measured capacity: goodput and rejections")
    ap.add_argument("--large-payload", action="store_true", help="/health latency while 8 clients send 1.4 MB requests")
    ap.add_argument("--burst", type=int, default=0, metavar="N",
                    help="N requests at once of 64 dialogues x 256 tokens (the audit's overload; use the tiny model)")
    ap.add_argument("--fuzz", type=int, default=0, metavar="CASES", help="schemathesis cases from /openapi.json (0 5xx wanted)")
    ap.add_argument("--pressure-config", default="batched", choices=list(CONFIGS), help="server config for both modes")
    args = ap.parse_args(argv)

    from flant5_lib.synthetic import generate_records

    model = ensure_model(args.model)
    dialogues = [r["dialogue"] for r in generate_records(64, seed=123)]
    levels = [int(c) for c in args.clients.split(",")]
    per_level = 16 if args.quick else args.requests
    log_dir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    results: dict[str, dict[int, dict]] = {}
    soak: dict[str, dict] = {}
    pressed = pressure(args, model, dialogues, log_dir) if args.overload or args.large_payload or args.fuzz or args.burst else {}
    configs = [c for c in args.configs.split(",") if c]
    os.environ["FLANT5_CACHE_DIR"] = str(log_dir / "cache")  # the servers' cache too: one CTranslate2 conversion
    engine_ms = {name: bare_engine_ms(model, CONFIGS[name], args.threads, dialogues, args.tokens) for name in configs}
    watch = LoadWatch().__enter__()
    for name in configs:
        server = Server(model, [*CONFIGS[name], f"serve_threads={args.threads}"], log_dir, name)
        try:
            t = time.monotonic()
            server.wait_ready()
            print(f"[{name}] ready in {time.monotonic() - t:.0f} s", file=sys.stderr)
            asyncio.run(load(server.base, dialogues, 2, 2, args.tokens))  # warm-up
            results[name] = {}
            for c in levels:
                per_client = -(-per_level // c)  # at least `per_level` requests at every level
                before = engine_seconds(server.base)
                results[name][c] = r = asyncio.run(load(server.base, dialogues, c, per_client, args.tokens))
                after = engine_seconds(server.base)
                # the engine's own time inside this server for these requests: at 1 client, one call per request
                r["engine_in_server_ms"] = 1000 * (after[0] - before[0]) / max(after[1] - before[1], 1)
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

    watch.__exit__(None, None, None)
    print(f"\nmodel: {model.name} (random weights); {args.tokens} new tokens per request; "
          f"{os.cpu_count()} CPU cores, serve_threads={args.threads}; "
          f"{'quick run: a smoke test, quote no ratio from it' if args.quick else 'full run'}\n{watch.line()}\n"
          "engine ms: the bare engine's median time for one dialogue (the server's backend.generate, in this process, "
          "no HTTP); overhead: p50 at 1 client minus that; in server: the server's own p50 (Server-Timing) minus that; "
          "path: mean latency at 1 client minus the mean time of the same requests' engine calls inside the server "
          "(/metrics), the server's own cost without the engine's process-to-process spread")
    print(("NOISY RUN: " if watch.noisy else "") + f"{'config':<13}{'clients':>8}{'requests':>10}{'failed':>8}{'req/s':>9}"
          f"{'p50 ms':>9}{'p95 ms':>9}{'engine ms':>11}{'overhead':>10}{'in server':>11}{'path':>9}")
    for name, by_level in results.items():
        for c, r in by_level.items():
            extra = (f"{engine_ms[name]:>11.0f}{r['p50_ms'] - engine_ms[name]:>+8.0f}ms"
                     f"{r['server_p50_ms'] - engine_ms[name]:>+9.0f}ms"
                     f"{r['mean_ms'] - r['engine_in_server_ms']:>+7.1f}ms" if c == 1 else "")
            print(f"{name:<13}{c:>8}{r['requests']:>10}{r['failures']:>8}{r['rps']:>9.2f}{r['p50_ms']:>9.0f}{r['p95_ms']:>9.0f}{extra}")
    if soak:
        print(f"\nsoak: 60 s at 32 clients\n{'config':<13}{'requests':>10}{'failed':>8}{'req/s':>9}{'p95 ms':>9}{'RSS start':>11}{'RSS end':>9}{'growth':>8}")
        for name, r in soak.items():
            print(f"{name:<13}{r['requests']:>10}{r['failures']:>8}{r['rps']:>9.2f}{r['p95_ms']:>9.0f}"
                  f"{r['rss_start_mb']:>10.0f}M{r['rss_end_mb']:>8.0f}M{r['rss_growth_pct']:>7.1f}%")

    def ratio(a: str, b: str, key: str, level: int) -> float | None:
        """None unless both servers answered every request at that level (a shedding server is no baseline)."""
        try:
            ra, rb = results[a][level], results[b][level]
            return round(ra[key] / rb[key], 2) if ra["failures"] == rb["failures"] == 0 else None
        except (KeyError, ZeroDivisionError):
            return None

    top = max(levels)
    summary = {
        "quick": args.quick, **watch.report(), "requests_per_level": per_level, "clients_top": top,
        "batched_vs_naive_speedup": ratio("batched", "naive", "rps", top),
        "ct2_vs_batched_speedup": ratio("batched+ct2", "batched", "rps", top),
        "ct2_vs_naive_speedup": ratio("batched+ct2", "naive", "rps", top),
        "auto_vs_naive_speedup": ratio("batched+auto", "naive", "rps", top),
        "p95_1client_batched_over_naive": ratio("batched", "naive", "p95_ms", 1),
        "p95_1client_ct2_over_naive": ratio("batched+ct2", "naive", "p95_ms", 1),
        "failed_requests": sum(r["failures"] for by in results.values() for r in by.values()),
    }
    for name in results:
        if 1 in results[name]:
            summary[f"{name}_engine_ms"] = round(engine_ms[name], 1)
            summary[f"{name}_p50_1client_ms"] = round(results[name][1]["p50_ms"], 1)
            summary[f"{name}_server_overhead_ms"] = round(results[name][1]["p50_ms"] - engine_ms[name], 1)
            summary[f"{name}_in_server_overhead_ms"] = round(results[name][1]["server_p50_ms"] - engine_ms[name], 1)
            summary[f"{name}_engine_in_server_ms"] = round(results[name][1]["engine_in_server_ms"], 1)
            summary[f"{name}_request_path_ms"] = round(results[name][1]["mean_ms"] - results[name][1]["engine_in_server_ms"], 1)
        for c in levels:
            if c in results[name]:
                summary[f"{name}_p50_ms@{c}"] = round(results[name][c]["p50_ms"])
                summary[f"{name}_p95_ms@{c}"] = round(results[name][c]["p95_ms"])
    if "overload" in pressed:
        o = pressed["overload"]
        print(f"\noverload ({args.pressure_config}, real 55 s deadline): capacity {o['capacity_rps']:.2f} req/s, "
              f"offered {o['offered_rps']:.2f} req/s for {'15' if args.quick else '30'} s")
        print(f"{'sent':>6}{'ok':>6}{'429/503':>9}{'504':>6}{'other':>7}{'goodput':>9}{'ok p50':>9}{'ok p95':>9}"
              f"{'rej p50':>9}{'rej p95':>9}{'rej max':>9}{'srv p50':>9}{'srv p95':>9}")
        print(f"{o['sent']:>6}{o['ok']:>6}{o['rejected']:>9}{o['deadline']:>6}{o['other']:>7}{o['goodput_rps']:>9.2f}"
              f"{o['ok_p50_ms']:>9.0f}{o['ok_p95_ms']:>9.0f}{o['reject_p50_ms']:>9.1f}{o['reject_p95_ms']:>9.1f}{o['reject_max_ms']:>9.1f}"
              f"{o['server_reject_p50_ms']:>9.1f}{o['server_reject_p95_ms']:>9.1f}")
        print("(ms; rej = time to a 429 as the client saw it, srv = the server's own time for it, from Server-Timing)")
        summary.update({
            "overload_goodput_over_capacity": round(o["goodput_rps"] / o["capacity_rps"], 2),
            "overload_rejection_rate": round(o["rejected"] / max(o["sent"], 1), 2),
            "overload_reject_p95_ms": round(o["reject_p95_ms"], 1),
            "overload_server_reject_p95_ms": round(o["server_reject_p95_ms"], 1),
            "overload_deadline_hits": o["deadline"],
            "overload_ok_p95_ms": round(o["ok_p95_ms"]),
        })
    if "burst" in pressed:
        b = pressed["burst"]
        print(f"\nburst: {b['sent']} requests at once of 64 dialogues x 256 tokens ({args.pressure_config}, 55 s deadline)")
        print(f"{'ok':>6}{'429/503':>9}{'504':>6}{'other':>7}{'wall s':>8}{'ok p95':>9}{'rej p95':>9}{'rej max':>9}{'srv p95':>9}")
        print(f"{b['ok']:>6}{b['rejected']:>9}{b['deadline']:>6}{b['other']:>7}{b['wall_s']:>8.1f}{b['ok_p95_ms']:>9.0f}"
              f"{b['reject_p95_ms']:>9.1f}{b['reject_max_ms']:>9.1f}{b['server_reject_p95_ms']:>9.1f}")
        summary.update({"burst_ok": b["ok"], "burst_rejected": b["rejected"], "burst_deadline_hits": b["deadline"],
                        "burst_reject_p95_ms": round(b["reject_p95_ms"], 1)})
    if "large_payload" in pressed:
        idle, loaded = pressed["large_payload"]["idle"], pressed["large_payload"]["loaded"]
        print(f"\n/health while 8 clients send 1.4 MB requests ({loaded['big_answered']} answered, "
              f"{loaded['big_failed']} failed)\n{'':<8}{'probes':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for label, r in (("idle", idle), ("loaded", loaded)):
            print(f"{label:<8}{r['probes']:>8}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}")
        summary.update({"large_payload_health_p99_ms": round(loaded["p99_ms"], 1),
                        "large_payload_health_p99_over_idle": round(loaded["p99_ms"] / idle["p99_ms"], 2),
                        "large_payload_failed": loaded["big_failed"]})
    if "fuzz" in pressed:
        f = pressed["fuzz"]
        print(f"\nfuzz: {f['cases']} schemathesis cases, statuses {f['by_status']}")
        summary.update({"fuzz_cases": f["cases"], "fuzz_server_errors": f["server_errors"]})
    if soak:
        summary["soak_failed_requests"] = sum(r["failures"] for r in soak.values())
        summary["soak_max_rss_growth_pct"] = round(max(r["rss_growth_pct"] for r in soak.values()), 1)
    summary = {k: v for k, v in summary.items() if v is not None and v == v}  # drop what was not measured (None, NaN)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
