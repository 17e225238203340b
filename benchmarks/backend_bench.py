"""CPU inference backends side by side: every engine the project serves with, plain PyTorch fp32 as the baseline, and
the peer a user would otherwise pick (Hugging Face Optimum + ONNX Runtime, int8 dynamic quantisation).

Same inputs for all (64 real SAMSum test dialogues from ../shared when present, else synthetic ones; encoded once by
the project's `encode_sources`), flan-t5-base's architecture with random weights, exactly --tokens new tokens
(min = max), batch 1 and 16, 1 and 2 threads. Each engine runs in its own worker process (clean peak RSS, its own
thread setting); the workers of one thread setting are alive together and take turns, repetition by repetition
(interleaved, rotating order), so the machine's noise hits all of them alike; medians are reported.

The peer runs in a throwaway virtual environment under .cache/backend-bench/ (Optimum pins transformers < 4.58, the
project needs 5.x); the benchmark creates it on first use with the ordinary pip client (nothing is installed into
the project's environment).

    .venv/bin/python benchmarks/backend_bench.py --quick     # a few minutes once the peer's venv and export exist
    .venv/bin/python benchmarks/backend_bench.py             # 64 dialogues, 3 repetitions

Prints a table, then (last) one JSON line with the ratios against PyTorch fp32 and against the peer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "backend-bench"
DEFAULT_MODEL = REPO / ".cache" / "bench" / "base-arch"
SHARED = REPO.parent / "shared"
SAMSUM_TEST = SHARED / "data" / "samsum" / "original" / "test.json"
T5_TOKENIZER = SHARED / "tokenizers" / "t5"
PEER_VENV = CACHE / "ort-venv"
# The peer's stack, pinned so two runs compare like with like (Optimum's exporter needs transformers < 4.58).
PEER_PINS = ["torch==2.13.0", "transformers==4.57.6", "optimum==2.1.0", "optimum-onnx==0.1.0", "onnxruntime==1.32.0"]


# ----------------------------------------------------------------------------------------------------------------
# Workers (run in a subprocess; the peer's in the throwaway venv, so nothing here may import flant5_lib at the top)
# ----------------------------------------------------------------------------------------------------------------


class Engine:
    """One loaded engine: greedy ids for a batch of token ids, by the engine's own generation call (timed)."""

    def ids(self, batch: list[list[int]], tokens: int) -> list[list[int]]:
        raise NotImplementedError


class ProjectEngine(Engine):
    """A backend exactly as the prediction server loads it (`serve.backends.load_backend`)."""

    def __init__(self, model: str, backend: str, threads: int, overrides: dict[str, Any]) -> None:
        from flant5_lib.config import Params
        from flant5_lib.serve.backends import load_backend

        params = Params(serve_backend=backend, serve_threads=threads, **overrides)
        self.backend = load_backend(model, params, device="cpu")
        self.name = self.backend.name

    def ids(self, batch: list[list[int]], tokens: int) -> list[list[int]]:
        b = self.backend
        if hasattr(b, "greedy_ids"):
            return b.greedy_ids(batch, tokens, tokens)
        import torch

        width = max(len(s) for s in batch)
        pad = b.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        with torch.inference_mode():
            out = b.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                   num_beams=1, do_sample=False)
        return [row[1:].tolist() for row in out]  # drop the decoder start token


class PeerEngine(Engine):
    """Optimum's ORTModelForSeq2SeqLM on the exported (and quantised) ONNX files: what a user would deploy."""

    def __init__(self, onnx_dir: str, threads: int) -> None:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.model = ORTModelForSeq2SeqLM.from_pretrained(onnx_dir, session_options=opts, provider="CPUExecutionProvider")
        self.pad = self.model.config.pad_token_id
        self.name = "onnxruntime"

    def _generate(self, batch: list[list[int]], tokens: int) -> Any:
        import torch

        width = max(len(s) for s in batch)
        pad = self.pad
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        return self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                   num_beams=1, do_sample=False)

    def ids(self, batch: list[list[int]], tokens: int) -> list[list[int]]:
        return [row[1:].tolist() for row in self._generate(batch, tokens)]


def worker(spec: dict[str, Any]) -> int:
    """JSON lines in, JSON lines out: `run` (timed; its greedy ids on request), `exit` (peak RSS)."""
    reply({"started": True})  # also moves fd 1 to stderr before any library loads
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # to the log file
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for key, value in spec.get("env", {}).items():
        os.environ[key] = value
    inputs = json.loads(Path(spec["inputs"]).read_text())
    t = time.perf_counter()
    if spec["kind"] == "peer":
        engine: Engine = PeerEngine(spec["onnx_dir"], spec["threads"])
    else:
        if spec["threads"]:
            import torch

            torch.set_num_threads(spec["threads"])  # the fp32 baseline's generate and any torch op in a backend
        engine = ProjectEngine(spec["model"], spec["kind"], spec["threads"], spec.get("overrides", {}))
    reply({"ready": True, "load_s": time.perf_counter() - t, "engine": engine.name})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            reply({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
            return 0
        rows = inputs[: cmd["n"]]
        # sort: every engine gets the same length-sorted batches (the fair comparison); otherwise arrival order, as
        # a user's own batching would cut them. Summaries go back to input order either way.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i])) if cmd.get("sort") else list(range(len(rows)))
        batches = [[rows[j] for j in order[i : i + cmd["batch"]]] for i in range(0, len(rows), cmd["batch"])]
        # Timed: each engine's own generation call, with exactly `tokens` new tokens (detokenising, microseconds for
        # 16 tokens, is left out for all alike); the ids come back when asked for, for the agreement check.
        cpu, wall = time.process_time(), time.perf_counter()
        out = [row for b in batches for row in engine.ids(b, cmd["tokens"])]
        wall = time.perf_counter() - wall
        ids = [row for _, row in sorted(zip(order, out))]
        reply({"dlg_s": len(rows) / wall, "wall_s": wall, "cpu_s": time.process_time() - cpu,
               "ids": ids if cmd.get("keep_ids") else None})
    return 1


_PROTOCOL: Any = None


def reply(obj: dict[str, Any]) -> None:
    """Answers go to the original stdout; fd 1 itself points at stderr, so a library's prints cannot corrupt them."""
    global _PROTOCOL
    if _PROTOCOL is None:
        _PROTOCOL = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    _PROTOCOL.write(json.dumps(obj) + "\n")
    _PROTOCOL.flush()


def peer_export(model: str, out: str, isa: str) -> int:
    """Export with Optimum, then int8 dynamic quantisation of every ONNX file (Optimum's recipe for this CPU's ISA).

    transformers 4.x reads `tie_word_embeddings: true` from a transformers-5 T5 folder and rescales the decoder output
    by d_model**-0.5 (it ignores `scale_decoder_outputs: false`): greedy ids are unchanged, scores are not.
    """
    from optimum.onnxruntime import ORTModelForSeq2SeqLM, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    fp32, int8 = Path(out) / "fp32", Path(out) / "int8"
    if not (fp32 / "config.json").is_file():
        ORTModelForSeq2SeqLM.from_pretrained(model, export=True).save_pretrained(fp32)
    # tokenizer.json only: transformers 4.x cannot read a transformers-5 tokenizer_config (the workers get token ids).
    shutil.copy2(Path(model) / "tokenizer.json", fp32 / "tokenizer.json")
    qconfig = getattr(AutoQuantizationConfig, isa)(is_static=False, per_channel=False)
    for f in sorted(fp32.glob("*.onnx")):
        ORTQuantizer.from_pretrained(fp32, file_name=f.name).quantize(save_dir=int8, quantization_config=qconfig, file_suffix="")
    for f in fp32.iterdir():
        if f.suffix != ".onnx" and not f.name.endswith(".onnx_data") and not (int8 / f.name).exists():
            shutil.copy2(f, int8 / f.name)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Driver (the project's environment)
# ----------------------------------------------------------------------------------------------------------------


def ensure_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        cmd = [sys.executable, "-m", "flant5_lib", "model", "init-tiny", "--size", "base-arch", "--out", str(path)]
        if (T5_TOKENIZER / "tokenizer.json").is_file():
            cmd += ["--tokenizer", str(T5_TOKENIZER)]
        print("building", path, "(flan-t5-base architecture, random weights)...", file=sys.stderr)
        subprocess.run(cmd, check=True)
    return path


def load_dialogues(n: int) -> tuple[list[str], str]:
    """Real SAMSum test dialogues when ../shared has them (read in place, never copied), else synthetic ones."""
    if SAMSUM_TEST.is_file():
        rows = json.loads(SAMSUM_TEST.read_text())
        return [r["dialogue"] for r in rows[:n]], "SAMSum test (real)"
    from flant5_lib.synthetic import generate_records

    return [r["dialogue"] for r in generate_records(n, seed=123)], "synthetic (../shared/data/samsum not found)"


def peer_python() -> Path:
    """The throwaway venv for Optimum + ONNX Runtime, created once with the ordinary pip client."""
    py = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / "flant5-pins.txt"
    if py.is_file() and stamp.is_file() and stamp.read_text().split() == PEER_PINS:
        return py
    print(f"creating the peer's environment in {PEER_VENV} ({' '.join(PEER_PINS)}); once, a few minutes...", file=sys.stderr)
    shutil.rmtree(PEER_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PINS], check=True)
    stamp.write_text("\n".join(PEER_PINS))
    return py


def peer_model(model: Path, isa: str) -> Path:
    """Optimum's export + int8 quantisation of `model`, cached by the model's fingerprint."""
    from flant5_lib.serve.ct2 import fingerprint

    out = CACHE / f"peer-{model.name}-{fingerprint(model)}-{isa}"
    if not (out / "int8" / "config.json").is_file():
        print(f"exporting {model} with Optimum and quantising it ({isa}); once, several minutes...", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        subprocess.run([str(peer_python()), __file__, "--peer-export", str(model), str(tmp), isa], check=True, env=env)
        tmp.rename(out)
    return out


def folder_mb(path: Path, pattern: str) -> float:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file()) / 1e6


def gflop_per_dialogue(config: dict[str, Any], lengths: list[int], new_tokens: int) -> float:
    """Multiply-adds x 2 of one T5 summary (encoder over the real source length, decoder for new_tokens steps
    with a KV cache, cross-attention K/V once, the LM head every step), averaged over the inputs; padding not counted."""
    d, ff, inner = config["d_model"], config["d_ff"], config["num_heads"] * config["d_kv"]
    enc_layers, dec_layers, vocab = config["num_layers"], config.get("num_decoder_layers") or config["num_layers"], config["vocab_size"]
    ffn = (3 if config.get("is_gated_act", "gated" in config.get("feed_forward_proj", "")) else 2) * d * ff
    total = 0.0
    for s in lengths:
        enc = enc_layers * s * (4 * d * inner + ffn + 2 * s * inner)
        cross_kv = dec_layers * s * 2 * d * inner
        dec = sum(dec_layers * (4 * d * inner + 2 * d * inner + ffn + 2 * (t + 1) * inner + 2 * s * inner) + d * vocab
                  for t in range(new_tokens))
        total += 2 * (enc + cross_kv + dec)
    return total / len(lengths) / 1e9


def matmul_ceiling_gops(threads: int, seconds: float = 1.5) -> tuple[float, float, str]:
    """The best matrix-product rate torch reaches here, the roof an int8 engine's products could approach on this
    CPU with this many threads: int8 x int8 -> int32 (`_int_mm`, oneDNN with VNNI where the CPU has it) or, where
    that is slower, float32 `mm`. Without VNNI (AVX2 only) torch's `_int_mm` falls back to a path far below what
    CTranslate2's own AVX2 int8 kernels reach, so the float32 roof is the honest one there. Per second of wall clock,
    per CPU-second (the roof per busy core, which other people's load on a shared machine hardly moves), and which
    roof it was."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rates: dict[str, tuple[float, float]] = {}
    try:
        for kind, dtype, mm in (("int8", torch.int8, torch._int_mm), ("fp32", torch.float32, torch.mm)):
            best, best_cpu = 0.0, 0.0
            for m, k, n in ((2048, 2048, 2048), (1024, 768, 2048), (4096, 2048, 2048)):
                a = torch.randint(-128, 127, (m, k), dtype=dtype)
                b = torch.randint(-128, 127, (k, n), dtype=dtype)
                mm(a, b)
                for _ in range(3):
                    count, t, cpu = 0, time.perf_counter(), time.process_time()
                    while time.perf_counter() - t < seconds / 3:
                        mm(a, b)
                        count += 1
                    best = max(best, 2 * m * k * n * count / (time.perf_counter() - t) / 1e9)
                    best_cpu = max(best_cpu, 2 * m * k * n * count / max(time.process_time() - cpu, 1e-9) / 1e9)
            rates[kind] = (best, best_cpu)
    finally:
        torch.set_num_threads(old)
    kind = max(rates, key=lambda name: rates[name][0])
    return rates[kind][0], rates[kind][1], kind


class Worker:
    """One engine in its own process, answering the commands of `worker()`."""

    def __init__(self, label: str, spec: dict[str, Any], python: Path, log_dir: Path) -> None:
        self.label = label
        self.log = (log_dir / f"{label.replace(' ', '_').replace('/', '-')}-{spec['threads']}t.log").open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if spec["kind"] == "peer":
            env["PYTHONPATH"] = ""  # nothing of the project's environment in the peer's
        self.proc = subprocess.Popen([str(python), __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO, env=env)
        self.read()  # started
        self.ready = self.read()

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = Path(self.log.name).read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"{self.label} worker died; see {self.log.name}: {' | '.join(tail)}")
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> int:
        try:
            peak = self.ask(cmd="exit")["peak_rss"]
        finally:
            self.proc.wait(timeout=60)
            self.log.close()
        return peak


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, float]:
    """Whole summaries equal, and tokens equal up to the first divergence (later tokens follow a different prefix)."""
    same = sum(a == b for a, b in zip(reference, other))
    prefix = 0
    for a, b in zip(reference, other):
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        prefix += k / max(len(a), 1)
    return {"sequences": same / len(reference), "tokens_before_divergence": prefix / len(reference)}


def spread(xs: list[float]) -> float:
    """(max - min) / median: how much the machine's noise moved one measurement."""
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (flan-t5-base shape built once if missing)")
    ap.add_argument("--quick", action="store_true", help="16 dialogues (2 at batch 1), 2 repetitions (a few minutes on an "
                    "idle 2-core machine once the peer is exported)")
    ap.add_argument("--dialogues", type=int, default=64, help="dialogues per batch-16 measurement")
    ap.add_argument("--batch1-dialogues", type=int, default=16, help="dialogues per batch-1 measurement")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per summary (fixed: min = max)")
    ap.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help=f"any of {', '.join(ENGINES)}")
    args = ap.parse_args(argv)
    if args.quick:
        args.dialogues, args.batch1_dialogues, args.reps = 16, 2, 2

    from flant5_lib.config import Params
    from flant5_lib.modeling import load_tokenizer
    from flant5_lib.preprocess import encode_sources
    from flant5_lib.serve.hardware import choose_backend, detect_cpu
    from machine import LoadWatch  # benchmarks/machine.py: the one rule for a noisy run (not in the peer's workers)

    cpu = detect_cpu()
    model = ensure_model(args.model)
    dialogues, source = load_dialogues(max(args.dialogues, args.batch1_dialogues))
    ids, _ = encode_sources(load_tokenizer(str(model)), dialogues, Params())
    log_dir = CACHE / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    inputs = log_dir / "inputs.json"
    inputs.write_text(json.dumps(ids))
    config = json.loads((model / "config.json").read_text())
    gflop = gflop_per_dialogue(config, [len(s) for s in ids[: args.dialogues]], args.tokens)
    gflop_b1 = gflop_per_dialogue(config, [len(s) for s in ids[: args.batch1_dialogues]], args.tokens)
    auto = choose_backend(cpu, Params(serve_backend="auto"))
    engines = [e for e in args.engines.split(",") if e]
    onnx_dir = peer_model(model, cpu.onnx_quantization_isa) if any(ENGINES[e]["kind"] == "peer" for e in engines) else None

    print(f"CPU: {cpu.describe()}; auto choice: {auto.describe()}", file=sys.stderr)
    thread_counts = [int(t) for t in args.threads.split(",")]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    ceilings: dict[int, float] = {}
    ceilings_cpu: dict[int, float] = {}
    ref_ids: list[list[int]] | None = None
    agree: dict[str, dict[str, float]] = {}
    watch = LoadWatch().__enter__()  # stopped after the last measurement, before the table
    for threads in thread_counts:
        ceilings[threads], ceilings_cpu[threads], roof_kind = matmul_ceiling_gops(threads)
        print(f"[{threads} thread(s)] matmul ceiling ({roof_kind}) {ceilings[threads]:.0f} GOP/s "
              f"({ceilings_cpu[threads]:.0f} GOP per CPU-second)", file=sys.stderr)
        workers: list[Worker] = []
        try:
            for name in engines:
                e = ENGINES[name]
                spec = {**e, "threads": threads, "model": str(model), "inputs": str(inputs),
                        "env": e.get("env", {}) if cpu.machine == "x86_64" else {},
                        "onnx_dir": str(onnx_dir / e["onnx"]) if e["kind"] == "peer" else None}
                workers.append(Worker(name, spec, peer_python() if e["kind"] == "peer" else Path(sys.executable), log_dir))
                print(f"[{threads} thread(s)] {name}: loaded in {workers[-1].ready['load_s']:.1f} s", file=sys.stderr)
            for w in workers:
                w.ask(cmd="run", batch=2, n=2, tokens=args.tokens)  # warm-up (first-call allocations, lazy init)
                results[(w.label, threads)] = {"b1": [], "b16": [], "b16_cpu": [], "b16_arrival": []}
            for rep in range(args.reps):
                order = workers[rep % len(workers):] + workers[: rep % len(workers)]  # rotate who goes first
                for batch, n, key in ((16, args.dialogues, "b16"), (1, args.batch1_dialogues, "b1"),
                                      (16, args.dialogues, "b16_arrival")):
                    for w in order:
                        if key == "b16_arrival" and w.label != PEER:
                            continue  # the peer as a user deploys it: batches in arrival order (Optimum sorts nothing)
                        keep = rep == 0 and key == "b16" and threads == thread_counts[0]
                        r = w.ask(cmd="run", batch=batch, n=n, tokens=args.tokens, keep_ids=keep, sort=key == "b16")
                        if keep:  # greedy ids of the first batch-16 pass, compared with the baseline's below
                            agree[w.label] = r["ids"]
                            ref_ids = r["ids"] if w.label == BASELINE else ref_ids
                        results[(w.label, threads)][key].append(r["dlg_s"])
                        if key == "b16":
                            results[(w.label, threads)]["b16_cpu"].append(n / r["cpu_s"])
                        print(f"[{threads} thread(s)] rep {rep + 1} {w.label:<18} {key:<11}: {r['dlg_s']:.2f} dlg/s "
                              f"(cpu {r['cpu_s'] / r['wall_s']:.2f} cores)", file=sys.stderr)
        finally:
            for w in workers:
                try:
                    results.setdefault((w.label, threads), {})["peak_rss"] = w.close()
                except Exception as err:  # a dead worker: report what we have
                    print(f"{w.label}: {err}", file=sys.stderr)
                    w.proc.kill()
    watch.__exit__(None, None, None)
    if ref_ids is not None:
        agree = {k: agreement(ref_ids, v) for k, v in agree.items()}

    disk = {name: disk_mb(name, model, onnx_dir, auto) for name in engines}
    print(f"\nCPU: {cpu.describe()}\nmodel: {model.name} (flan-t5-base architecture, random weights); inputs: {source}, "
          f"{args.dialogues} dialogues at batch 16 and {args.batch1_dialogues} at batch 1, mean "
          f"{statistics.mean(len(s) for s in ids[: args.dialogues]):.0f} source tokens; exactly {args.tokens} new tokens; "
          f"{args.reps} interleaved repetitions, medians (spread = (max-min)/median); "
          f"{gflop:.1f} GFLOP per dialogue; auto choice: {auto.describe()}\n"
          f"batch 16: every engine gets the same length-sorted batches; 'onnxrt-int8 arrival' is the peer as a user deploys it, fed batches in "
          f"arrival order\n{watch.line()}")
    head = (f"{'engine':<20}{'thr':>4}{'b1 dlg/s':>10}{'b16 dlg/s':>11}{'spread':>8}{'b16 vs fp32':>12}{'b16 vs peer':>12}"
            f"{'b1 vs peer':>11}{'b16 dlg/CPU-s':>14}{'% mm roof':>12}{'(per CPU-s)':>12}{'peak RSS':>10}{'disk':>9}{'same ids':>9}")
    print(("NOISY RUN: " if watch.noisy else "") + head)
    summary: dict[str, Any] = {"cpu": cpu.model, "isa": cpu.isa, "inputs": source, "auto": auto.describe(),
                               "gflop_per_dialogue": round(gflop, 1), "batches": "length-sorted, same for every engine",
                               **watch.report()}
    for r in results.values():
        if r.get("b16"):
            r["median"] = {k: statistics.median(r[k]) for k in ("b1", "b16", "b16_cpu")}
            if r.get("b16_arrival"):
                r["median"]["b16_arrival"] = statistics.median(r["b16_arrival"])
    for (name, threads), r in results.items():
        if "median" not in r:
            continue
        med = r["median"]

        def ratio(other: str, key: str) -> float | None:
            o = results.get((other, threads), {}).get("median")
            return round(med[key] / o[key], 2) if o else None

        share = med["b16"] * gflop / ceilings[threads]
        share_cpu = med["b16_cpu"] * gflop / ceilings_cpu[threads]  # the same, per busy CPU-second
        a = agree.get(name, {}) if isinstance(agree.get(name), dict) else {}
        vs_fp32, vs_peer, b1_peer = ratio(BASELINE, "b16"), ratio(PEER, "b16"), ratio(PEER, "b1")
        print(f"{name:<20}{threads:>4}{med['b1']:>10.2f}{med['b16']:>11.2f}{max(spread(r['b1']), spread(r['b16'])):>7.0%} "
              f"{_fmt(vs_fp32):>11}{_fmt(vs_peer):>12}{_fmt(b1_peer):>11}{med['b16_cpu']:>14.2f}{share:>11.0%}{share_cpu:>11.0%} {r.get('peak_rss', 0) / 1e9:>8.2f}G"
              f"{disk[name]:>8.0f}M{a.get('sequences', float('nan')):>8.0%}")
        summary[f"{name}@{threads}t"] = {"b1_dlg_s": round(med["b1"], 2), "b16_dlg_s": round(med["b16"], 2),
                                         "b16_dlg_per_cpu_s": round(med["b16_cpu"], 2),
                                         "b16_vs_fp32": vs_fp32, "b16_vs_peer": vs_peer, "b1_vs_peer": b1_peer,
                                         "int8_roof_share_b16": round(share, 3), "int8_roof_share_b16_per_cpu_s": round(share_cpu, 3), "peak_rss_gb": round(r.get("peak_rss", 0) / 1e9, 2),
                                         "disk_mb": round(disk[name]), "spread": round(max(spread(r["b1"]), spread(r["b16"])), 2),
                                         "same_ids": round(a["sequences"], 3) if a else None}
        peer = results.get((PEER, threads), {}).get("median", {})
        if name == PEER and "b16_arrival" in med:
            print(f"{'onnxrt-int8 arrival':<20}{threads:>4}{med['b1']:>10.2f}{med['b16_arrival']:>11.2f}{spread(r['b16_arrival']):>7.0%} "
                  f"{'':>11}{_fmt(round(med['b16_arrival'] / med['b16'], 2)):>12}   (batches in arrival order)")
            summary[f"{name}@{threads}t"]["b16_arrival_dlg_s"] = round(med["b16_arrival"], 2)
        elif "b16_arrival" in peer:
            summary[f"{name}@{threads}t"]["b16_vs_peer_as_deployed"] = round(med["b16"] / peer["b16_arrival"], 2)
    summary["roof"] = roof_kind  # int8 (_int_mm) where it is the faster product here, else fp32 (no VNNI)
    summary["int8_roof_gops"] = {f"{t}t": round(c) for t, c in ceilings.items()}
    summary["int8_roof_gop_per_cpu_s"] = {f"{t}t": round(c) for t, c in ceilings_cpu.items()}
    print(json.dumps(summary))
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def disk_mb(name: str, model: Path, onnx_dir: Path | None, auto: Any) -> float:
    """What the engine's files take on disk (auto: what its choice `auto` converts and exports)."""
    e = ENGINES[name]
    if e["kind"] == "peer":
        return folder_mb(onnx_dir / e["onnx"], "*.onnx*") if onnx_dir else 0.0
    own_onnx, auto_backend = 0.0, auto.backend
    routed = e["kind"] == "auto" and auto.single and e.get("overrides", {}).get("serve_onnx_single", True)
    if e["kind"] == "onnxruntime" or routed:
        from flant5_lib.serve.onnx_engine import export_model

        own_onnx = folder_mb(export_model(model, "int8"), "*.onnx")
        if e["kind"] == "onnxruntime":
            return own_onnx
    if e["kind"] == "ctranslate2" or (e["kind"] == "auto" and auto_backend == "ctranslate2"):
        from flant5_lib.serve.ct2 import convert_model

        return own_onnx + folder_mb(convert_model(model, e.get("overrides", {}).get("serve_ct2_compute_type", "int8")), "*.bin")
    return folder_mb(model, "*.safetensors")


BASELINE, PEER, DEFAULT = "pytorch-fp32", "onnxruntime-int8", "auto"
STOCK_ISA = {"CT2_FORCE_CPU_ISA": "AVX2"}  # what CTranslate2 picks by itself on x86, AVX-512 or not
ENGINES: dict[str, dict[str, Any]] = {
    BASELINE: {"kind": "hf"},
    # The project's CTranslate2 path before host tuning: one replica, all threads on every batch, CT2's own ISA choice.
    "ct2-int8-untuned": {"kind": "ctranslate2", "overrides": {"serve_ct2_split_batches": False}, "env": STOCK_ISA},
    # auto without its ONNX Runtime route: host-tuned CTranslate2 for every batch, a lone dialogue included.
    "ct2-int8-tuned": {"kind": "auto", "overrides": {"serve_onnx_single": False}},
    # What `serve_backend: auto` loads here (the server's and `flant5 summarize`'s choice), however it resolves: on
    # x86 a lone greedy dialogue on the project's ONNX Runtime export, batches on host-tuned CTranslate2.
    DEFAULT: {"kind": "auto"},
    PEER: {"kind": "peer", "onnx": "int8"},
    # The project's own int8 ONNX Runtime export alone (one dialogue at a time, a batch of 16 included).
    "ort-own-int8": {"kind": "onnxruntime"},
    # Extra rows on request (--engines): the split without the ISA change, and the peer without quantisation.
    "ct2-int8-split-avx2": {"kind": "ctranslate2", "env": STOCK_ISA},
    "onnxruntime-fp32": {"kind": "peer", "onnx": "fp32"},
}
DEFAULT_ENGINES = [BASELINE, "ct2-int8-untuned", "ct2-int8-tuned", DEFAULT, PEER]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("--worker", "--peer-export"):
    if sys.argv[1] == "--worker":
        sys.exit(worker(json.loads(sys.argv[2])))
    sys.exit(peer_export(*sys.argv[2:5]))

if __name__ == "__main__":
    sys.exit(main())
