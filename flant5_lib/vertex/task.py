"""The script a Vertex AI training job runs: install the project if needed, then call `flant5_lib.train`.

In a hyperparameter tuning trial, the `--name=value` arguments Vertex appends become `--set name=value`
(`trial_args`); the trainer itself reports each validation score to the tuning service (`flant5_lib.train.hypertune`).

Kept free of project imports at module level because on a prebuilt PyTorch image it starts before
the project is installed. With more than one GPU or replica it re-launches the entry point under
`torchrun`, taking the rendezvous address from the variables Vertex sets (MASTER_ADDR/MASTER_PORT/
WORLD_SIZE/RANK on PyTorch images, CLUSTER_SPEC otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile

log = logging.getLogger("flant5_lib.vertex.task")


def _install_project(package_uri: str) -> None:
    """pip-install the project's source archive from gs:// (dependencies come from the job's requirements)."""
    from google.cloud import storage  # present on every Vertex prebuilt image

    bucket, _, key = package_uri[len("gs://") :].partition("/")
    local = os.path.join(tempfile.mkdtemp(), os.path.basename(key))
    storage.Client().bucket(bucket).blob(key).download_to_filename(local)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", local], check=True)


RDZV_TIMEOUT_ENV = "FLANT5_RDZV_TIMEOUT_S"  # how long a node waits for the others (torchrun's static rendezvous)
DEFAULT_RDZV_TIMEOUT_S = 600  # torchrun's own default: a replica that never reaches the chief fails, never hangs
_RANKED_POOLS = ("workerpool0", "workerpool1")  # chief + workers; the reduction server and evaluators are not ranks


def _rendezvous() -> tuple[str, str, int, int]:
    """(master address, port, number of nodes, this node's rank) from the Vertex environment.

    Prebuilt PyTorch images get MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK (nodes, not processes); every image gets
    CLUSTER_SPEC, whose chief address (host:port, the port Vertex reserves for the replica) is the rendezvous."""
    if os.environ.get("MASTER_ADDR"):
        return (os.environ["MASTER_ADDR"], os.environ.get("MASTER_PORT", "29500"),
                int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")))
    spec = json.loads(os.environ.get("CLUSTER_SPEC", "{}") or "{}")
    cluster, task = spec.get("cluster", {}), spec.get("task", {})
    hosts = [h for pool in _RANKED_POOLS for h in cluster.get(pool, [])]
    if not hosts:
        return "127.0.0.1", "29500", 1, 0
    master, _, port = hosts[0].partition(":")
    kind = task.get("type", "workerpool0")
    before = len(cluster.get("workerpool0", [])) if kind == "workerpool1" else 0
    return master, port or "29500", len(hosts), before + int(task.get("index", 0))


def build_command(train_args: list[str], nproc_per_node: int, nnodes: int) -> list[str]:
    """The command line that runs the training entry point on this node."""
    if nproc_per_node <= 1 and nnodes <= 1:
        return [sys.executable, "-m", "flant5_lib.train", *train_args]
    addr, port, world, rank = _rendezvous()
    timeout = int(os.environ.get(RDZV_TIMEOUT_ENV, "") or DEFAULT_RDZV_TIMEOUT_S)
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={max(world, nnodes)}", f"--node_rank={rank}",
            f"--nproc_per_node={nproc_per_node}", f"--master_addr={addr}", f"--master_port={port}",
            f"--rdzv_conf=timeout={timeout}", "-m", "flant5_lib.train", *train_args]


def node_problem(nnodes: int | None) -> str | None:
    """One line when --nnodes disagrees with the replicas Vertex started: torchrun would wait for nodes that never
    come, or each replica would train alone and write the same AIP_MODEL_DIR."""
    world = _rendezvous()[2]
    if nnodes is not None and nnodes != world:
        return (f"--nnodes {nnodes} but this job runs {world} replica(s) (workerpool0 + workerpool1 replica_count); "
                f"set train_replica_count={nnodes} or --nnodes {world}")
    return None


def trial_args(train_args: list[str]) -> list[str]:
    """The entry point's arguments with a tuning trial's hyperparameters as `--set` overrides.

    Vertex AI appends each trial's values as `--name=value` after the job's own arguments (`--params gs://...`);
    `flant5_lib.train` takes them as `--set name=value`, so the Params model validates each one (an unknown name is
    one error line naming it). Outside a tuning job there are none and the arguments pass unchanged."""
    out: list[str] = []
    for arg in train_args:
        name, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and eq and name not in _TRAIN_OPTIONS:
            out += ["--set", f"{name.replace('-', '_')}={value}"]
        else:
            out.append(arg)
    return out


_TRAIN_OPTIONS = ("params", "set")  # the options of `python -m flant5_lib.train` itself


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Vertex AI training task for flant5_lib.")
    parser.add_argument("--project-package", help="gs:// source archive of the project, installed when not importable")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="GPUs per replica (torchrun when > 1)")
    parser.add_argument("--nnodes", type=int, default=None,
                        help="replicas (multi-node torchrun when > 1); default: as many as the job runs")
    args, train_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import flant5_lib  # noqa: F401
    except ImportError:
        if not args.project_package:
            log.error("flant5_lib is not installed and no --project-package was given")
            return 2
        log.info("installing %s", args.project_package)
        _install_project(args.project_package)
    problem = node_problem(args.nnodes)
    if problem:
        log.error("%s", problem)
        return 2
    nproc, nnodes = args.nproc_per_node, args.nnodes or _rendezvous()[2]
    if nproc > 1 or nnodes > 1:  # on CPU (the local stand-in) torchrun's workers use gloo: the same path, no NCCL
        log.info("distributed: %d node(s) x %d process(es)", nnodes, nproc)
    cmd = build_command(trial_args(train_args), nproc, nnodes)
    log.info("running: %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)  # replace this process, so Vertex's SIGTERM (preemption) reaches the trainer
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
