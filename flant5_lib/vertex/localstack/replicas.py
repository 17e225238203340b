"""Every replica of every worker pool as its own process, wired and supervised as Vertex AI does it.

Vertex gives each replica `CLUSTER_SPEC` (every pool's addresses, this replica's task type and index) and `TF_CONFIG`;
on its prebuilt PyTorch images it also sets `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE` (nodes) and `RANK` (this
node). Here every "VM" is a process on 127.0.0.1 with its own free port, its own working folder and its own log.
The job succeeds only when every replica exits 0; the first one that fails stops the others and fails the job with
its name and status (`workerpool1-0`); cancel stops them all. Pool 2 (the reduction server) is not run: its image is
Google's, and on CPU/gloo there is no NCCL all-reduce for it to speed up (docs/distributed-training.md).
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flant5_lib.procs import free_port, stop_process
from flant5_lib.vertex.localstack import preempt

log = logging.getLogger(__name__)

REDUCTION_SERVER_POOL = 2
_TF_TYPES = {0: "chief", 1: "worker", 2: "ps", 3: "evaluator"}  # Vertex's TF_CONFIG names for the four pools
_RANKED_POOLS = (0, 1)  # the pools that make up the PyTorch world (RANK / WORLD_SIZE); evaluators are outside it


def replica_count(pool: dict[str, Any]) -> int:
    return int(float(pool.get("replica_count", pool.get("replicaCount")) or 0))


def name(pool: int, index: int) -> str:
    return f"workerpool{pool}-{index}"


def cluster_addresses(pools: list[dict[str, Any]]) -> dict[str, list[str]]:
    """{"workerpool0": ["127.0.0.1:<port>"], "workerpool1": [...]}: one address per replica that runs here."""
    return {f"workerpool{p}": [f"127.0.0.1:{free_port()}" for _ in range(replica_count(pool))]
            for p, pool in enumerate(pools) if replica_count(pool) > 0 and p != REDUCTION_SERVER_POOL}


def replica_env(base: dict[str, str], cluster: dict[str, list[str]], pool: int, index: int, *,
                pytorch_image: bool) -> dict[str, str]:
    """The variables Vertex adds for one replica; MASTER_*/WORLD_SIZE/RANK only on prebuilt PyTorch images."""
    env = dict(base)
    env["CLUSTER_SPEC"] = json.dumps({"cluster": cluster, "environment": "cloud",
                                      "task": {"type": f"workerpool{pool}", "index": index}})
    tf_cluster = {_TF_TYPES[int(k[len("workerpool"):])]: v for k, v in cluster.items()}
    env["TF_CONFIG"] = json.dumps({"cluster": tf_cluster, "environment": "cloud",
                                   "task": {"type": _TF_TYPES[pool], "index": index}})
    for var in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"):
        env.pop(var, None)  # never inherited from whoever started the stand-in
    if pytorch_image and pool in _RANKED_POOLS:
        chief = cluster["workerpool0"][0]
        nodes = [a for p in _RANKED_POOLS for a in cluster.get(f"workerpool{p}", [])]
        env.update(MASTER_ADDR=chief.split(":")[0], MASTER_PORT=chief.split(":")[1], WORLD_SIZE=str(len(nodes)),
                   RANK=str(index if pool == 0 else len(cluster["workerpool0"]) + index))
    return env


def log_summary(path: Path, lines: int = 8) -> str:
    """What a failed replica's error names: the trainer's one-line errors (`flant5 train: error: ...`, printed once
    per torchrun worker) when there are any, since torchrun's own failure report buries them; else the log's tail."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = list(dict.fromkeys(line.strip() for line in text if ": error: " in line))
    return " | ".join(errors[:3] if errors else text[-lines:])


@dataclass
class Replica:
    """One replica: what it runs, where, and where its output goes."""

    pool: int
    index: int
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path

    @property
    def name(self) -> str:
        return name(self.pool, self.index)


@dataclass
class Group:
    """The live processes of one job, so a cancel or a failing replica can stop every one of them."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, replica: str, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.procs[replica] = proc
        if self.stopping.is_set():  # started while the job was being stopped
            stop_process(proc)

    def stop_all(self, except_: str | None = None) -> None:
        self.stopping.set()
        with self.lock:
            live = [(n, p) for n, p in self.procs.items() if n != except_]
        for n, proc in live:
            if proc.poll() is None:
                log.info("stopping replica %s", n)
                stop_process(proc)

    def poll(self) -> int | None:
        """None while the job runs (no replica started yet counts as running), else 0."""
        with self.lock:
            procs = list(self.procs.values())
        return None if not procs or any(p.poll() is None for p in procs) else 0

    def terminate(self) -> None:
        self.stop_all()


def run_all(replicas: list[Replica], group: Group, *, cancelled: Callable[[], bool],
            plan: preempt.PreemptPlan | None = None,
            on_restart: Callable[[dict[str, Any]], None] = lambda row: None) -> tuple[str, int] | None:
    """Run every replica to its end; returns (name, exit status) of the first that failed, None when all exited 0.

    The chief (workerpool0-0) alone takes Spot preemption (`plan`), as the single-replica path always did."""
    done: queue.Queue[tuple[str, int]] = queue.Queue()

    def one(r: Replica) -> None:
        code = 1
        try:
            code = preempt.run_replica(
                r.cmd, r.cwd, r.env, r.log_path, plan if r.name == name(0, 0) else None, name=r.name,
                on_start=lambda proc: group.started(r.name, proc), on_restart=on_restart,
                cancelled=lambda: cancelled() or group.stopping.is_set())
        except Exception:  # a replica that cannot start fails the job like one that exits non-zero
            log.exception("replica %s could not run", r.name)
        finally:
            done.put((r.name, code))

    threads = [threading.Thread(target=one, args=(r,), daemon=True, name=r.name) for r in replicas]
    for t in threads:
        t.start()
    failed: tuple[str, int] | None = None
    left = len(replicas)
    while left:
        try:
            replica, code = done.get(timeout=0.2)
        except queue.Empty:
            if cancelled() and not group.stopping.is_set():
                group.stop_all()
            continue
        left -= 1
        if code != 0 and failed is None and not group.stopping.is_set():
            failed = (replica, code)
            log.info("replica %s exited with status %d: stopping the others", replica, code)
            group.stop_all(except_=replica)
    for t in threads:
        t.join()
    return failed
