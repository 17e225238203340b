"""Multi-replica jobs through the real Vertex SDK against the stand-in: every replica of every pool a process with
Vertex's environment, torchrun on gloo across them, fail-fast, cancel, the pool-spec 400s and the rendezvous time-out.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flant5_lib import storage
from flant5_lib.config import load_params
from flant5_lib.vertex import jobs, specs
from flant5_lib.vertex.localstack import LocalStack

pytestmark = pytest.mark.timeout(900)

TINY = {"dataset": "synthetic:64", "model_name": "tiny", "max_steps": 6, "eval_strategy": "no", "logging_steps": 1,
        "save_steps": 1000, "save_every_minutes": None, "max_source_length": 64, "max_target_length": 16,
        "learning_rate": 3e-3, "group_by_length": False, "train_machine_type": "n1-standard-4"}
GLOBAL_BATCH = 8


def _pid(job: Any) -> str:
    return job.resource_name.rsplit("/", 1)[1]


def _state(stack: LocalStack, job: Any) -> str:
    with stack.backend.lock:
        return str(stack.backend.pipelines[_pid(job)]["state"])


def _job_dir(stack: LocalStack, job: Any) -> Path:
    return stack.workdir / "jobs" / f"pipeline-{_pid(job)}"


def _sdk(stack: LocalStack) -> Any:
    return jobs.init_sdk(load_params(None, stack.params_overrides()))


def _custom_job(stack: LocalStack, pools: list[dict[str, Any]], name: str) -> Any:
    """A CustomJob with explicit worker pools (the SDK's own class), run to its end."""
    aiplatform = _sdk(stack)
    return aiplatform.CustomJob(display_name=name, worker_pool_specs=pools, base_output_dir=f"{stack.bucket}/{name}",
                                staging_bucket=stack.bucket)


def _python_pool(stack: LocalStack, code: str, replicas: int = 1, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": replicas,
            "container_spec": {"image_uri": f"{stack.registry()}/flant5-train:latest", "command": ["python", "-c", code],
                               "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}}


@pytest.fixture(scope="module")
def tiny_uri(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model in gs://, as a multi-node job reads its base model: every node downloads it (a 'tiny' built on
    the spot is saved by global rank 0 only, transformers 5's save_pretrained rule, so other nodes would lack it)."""
    from flant5_lib.modeling import build_tiny_model

    local = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=42)
    storage.upload_dir(local, f"{stack.bucket}/base-models/tiny")
    return f"{stack.bucket}/base-models/tiny"


def _train(stack: LocalStack, model: str, name: str, replicas: int, nproc: int, **extra: Any) -> tuple[Any, dict[str, Any], float]:
    """The project's own launch (`jobs.run_training`: CustomContainerTrainingJob.run(replica_count=...)) of TINY with
    the same global batch split over replicas x processes; returns the job, train_metrics.json and its wall time."""
    gpus = {"train_accelerator_type": "NVIDIA_TESLA_T4", "train_accelerator_count": nproc,
            "train_machine_type": "n1-standard-8"} if nproc > 1 else {"train_accelerator_count": 0, "train_accelerator_type": ""}
    p = load_params(None, {**stack.params_overrides(), **TINY, **gpus, "train_replica_count": replicas,
                           "per_device_train_batch_size": GLOBAL_BATCH // (replicas * nproc),
                           "train_display_name": name, "tensorboard_resource": None, "model_name": model,
                           **extra})
    started = time.perf_counter()
    job, _ = jobs.run_training(p, wait=False)
    deadline = time.monotonic() + 800  # hang guard only
    while _state(stack, job) in ("PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING") and time.monotonic() < deadline:
        time.sleep(0.2)
    wall = time.perf_counter() - started
    out = specs.train_output_dir(p)
    metrics = json.loads(storage.read_text(f"{out}/model/train_metrics.json")) if storage.list_blobs(f"{out}/model") else {}
    return job, metrics, wall


@pytest.mark.slow
def test_two_replicas_train_as_one_world_and_only_the_chief_writes_the_model(stack: LocalStack, tiny_uri: str) -> None:
    job, metrics, _ = _train(stack, tiny_uri, "two-replicas", replicas=2, nproc=1)
    chief_log = (stack.workdir / "jobs" / f"pipeline-{_pid(job)}.log").read_text(errors="replace")
    assert _state(stack, job) == "PIPELINE_STATE_SUCCEEDED", chief_log[-3000:]
    assert (metrics["world_size"], metrics["nnodes"], metrics["nproc_per_node"]) == (2, 2, 1)
    req = stack.requests("/trainingPipelines", method="POST")[-1]["body"]["trainingTaskInputs"]
    assert [int(p["replica_count"]) for p in req["worker_pool_specs"]] == [1, 1]  # the SDK sent two pools
    job_dir = _job_dir(stack, job)
    worker_log = (job_dir / "workerpool1-0.log").read_text(errors="replace")
    assert "torch.distributed.run" in worker_log and "--node_rank=1" in worker_log
    # workerpool1-0 trained (its own working folder, its own local checkpoints) but never wrote a model
    assert (job_dir / "workerpool1-0").is_dir() and "model uploaded to" not in worker_log
    assert "model uploaded to" in chief_log

    # the same job again (same AIP_CHECKPOINT_DIR): every rank of both replicas resumes from the chief's checkpoint
    again, _, _ = _train(stack, tiny_uri, "two-replicas", replicas=2, nproc=1)
    assert _state(stack, again) == "PIPELINE_STATE_SUCCEEDED"
    logs = [(stack.workdir / "jobs" / f"pipeline-{_pid(again)}.log").read_text(errors="replace"),
            (_job_dir(stack, again) / "workerpool1-0.log").read_text(errors="replace")]
    steps = [re.findall(r"resuming automatically from \S+checkpoint-(\d+)", text) for text in logs]
    assert steps[0] == steps[1] == [str(metrics["global_step"])], steps


def test_a_failing_worker_fails_the_job_with_its_name_and_stops_the_chief(stack: LocalStack, tmp_path: Path) -> None:
    ready = tmp_path / "chief-running"
    chief = _python_pool(stack, f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(600)")
    worker = _python_pool(stack, f"import pathlib, sys, time\nwhile not pathlib.Path({str(ready)!r}).exists(): "
                                 "time.sleep(0.05)\nsys.exit(3)")
    job = _custom_job(stack, [chief, worker], "fail-fast")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"workerpool1-0 exited with a non-zero status of 3"):
        job.run(sync=True)
    assert time.monotonic() - started < 120  # hang guard only: the chief sleeps 600 s unless it is stopped
    group = stack.backend.processes[_pid(job)]
    chief_proc = group.procs["workerpool0-0"]
    assert chief_proc.poll() is not None and chief_proc.returncode != 0  # stopped, not finished
    assert job.state.name == "JOB_STATE_FAILED"


def test_cancel_stops_every_replica(stack: LocalStack, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    code = (f"import json, os, pathlib, time; t = json.loads(os.environ['CLUSTER_SPEC'])['task']; "
            f"pathlib.Path({str(marks)!r}, f\"{{t['type']}}-{{t['index']}}\").write_text(os.environ['CLUSTER_SPEC']); "
            "time.sleep(600)")
    job = _custom_job(stack, [_python_pool(stack, code), _python_pool(stack, code, replicas=2)], "cancel-all")
    job.submit()
    deadline = time.monotonic() + 120
    while len(list(marks.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    names = sorted(p.name for p in marks.iterdir())
    assert names == ["workerpool0-0", "workerpool1-0", "workerpool1-1"]
    spec = json.loads((marks / "workerpool1-1").read_text())
    assert len(spec["cluster"]["workerpool0"]) == 1 and len(spec["cluster"]["workerpool1"]) == 2
    assert len({*spec["cluster"]["workerpool0"], *spec["cluster"]["workerpool1"]}) == 3  # one address per replica
    job.cancel()
    while job.state.name not in ("JOB_STATE_CANCELLED", "JOB_STATE_FAILED") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.state.name == "JOB_STATE_CANCELLED"
    procs = stack.backend.processes[_pid(job)].procs
    assert sorted(procs) == names and all(p.poll() is not None for p in procs.values())


def test_a_replica_that_cannot_reach_the_rendezvous_fails_within_the_timeout(stack: LocalStack) -> None:
    """The chief never starts torchrun: workerpool1-0's torchrun waits FLANT5_RDZV_TIMEOUT_S, then the job fails."""
    chief = _python_pool(stack, "import time; time.sleep(600)")
    worker = {**_python_pool(stack, "", env={"FLANT5_RDZV_TIMEOUT_S": "5"})}
    worker["container_spec"] = {**worker["container_spec"], "command": [sys.executable, "-m", "flant5_lib.vertex.task"],
                                "args": ["--nnodes", "2", "--params", "gs://nowhere/p.yaml"]}
    job = _custom_job(stack, [chief, worker], "no-rendezvous")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"workerpool1-0 exited with a non-zero status"):
        job.run(sync=True)
    assert time.monotonic() - started < 180  # hang guard: the stated timeout is 5 s
    log_text = (stack.workdir / "jobs" / f"customjob-{_pid(job)}" / "workerpool1-0.log").read_text(errors="replace")
    assert "--rdzv_conf=timeout=5" in log_text and "timed out" in log_text


def test_nnodes_that_disagree_with_the_replicas_fail_with_one_line(stack: LocalStack) -> None:
    pool = _python_pool(stack, "")
    pool["container_spec"] = {**pool["container_spec"], "command": [sys.executable, "-m", "flant5_lib.vertex.task"],
                              "args": ["--nnodes", "2", "--params", "gs://nowhere/p.yaml"]}
    job = _custom_job(stack, [pool], "nnodes-mismatch")
    with pytest.raises(RuntimeError, match=r"--nnodes 2 but this job runs 1 replica"):
        job.run(sync=True)


@pytest.mark.parametrize("pools, message", [
    ([{"replica_count": 1}], "workerPoolSpecs[0].machineSpec.machineType is required"),
    ("worker-without-machine", "workerPoolSpecs[1].machineSpec.machineType is required"),
    ("chief-zero", "workerPoolSpecs[0].replicaCount must be 1"),
    ("reduction-without-image", "workerPoolSpecs[2].containerSpec.imageUri is required"),
    ("gpu-on-e2", "is not supported for machine type e2-standard-4"),
])
def test_pool_specs_vertex_refuses_get_its_400(stack: LocalStack, pools: Any, message: str) -> None:
    from google.api_core import exceptions as gexc

    base = _python_pool(stack, "pass")
    shapes = {
        "worker-without-machine": [base, {"replica_count": 1, "container_spec": base["container_spec"]}],
        "chief-zero": [{**base, "replica_count": 0}],
        "reduction-without-image": [base, {**base, "replica_count": 1},
                                    {"machine_spec": {"machine_type": "n1-highcpu-16"}, "replica_count": 1,
                                     "container_spec": {}}],
        "gpu-on-e2": [{**base, "machine_spec": {"machine_type": "e2-standard-4", "accelerator_type": "NVIDIA_TESLA_T4",
                                                "accelerator_count": 1}}],
    }
    pools = shapes.get(pools, pools) if isinstance(pools, str) else [{**base, **pools[0], "machine_spec": {}}]
    before = len(stack.backend.custom_jobs)
    with pytest.raises(gexc.BadRequest) as err:
        _custom_job(stack, pools, "refused").submit()
    assert message in str(err.value) and "\n" not in str(err.value.message)
    assert len(stack.backend.custom_jobs) == before  # refused before anything ran


FILLED = {"gcp_project": "proj-x", "staging_bucket": "gs://bkt/flant5"}


def test_preflight_catches_a_world_the_machines_cannot_give(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from flant5_lib.vertex import rules

    def lines(**overrides: Any) -> list[str]:
        return rules.problems(load_params("params/vertex-a100.yaml", {**FILLED, **overrides}))

    assert lines(train_preset="a100-40gb-2x2") == []  # 2 VMs x 2 GPUs: --nnodes 2 --nproc-per-node 2
    (fsdp,) = lines(distributed="fsdp")
    assert fsdp.startswith("distributed: fsdp needs 2 or more processes") and "a100-80gb-x8" in fsdp
    assert lines(train_preset="a100-40gb-2x2", model_name="tiny") == []  # a warning, not a refusal
    assert any(r.getMessage().startswith("model_name: 'tiny'") and "gs://" in r.getMessage() for r in caplog.records)
    # a request whose arguments drifted from its machines (hand-edited args, a preset applied on one side only)
    monkeypatch.setattr(specs, "task_args", lambda p, **kw: ["--nnodes", "1", "--nproc-per-node", "2"])
    found = lines(train_preset="a100-40gb-2x2")
    assert [f.split(":")[0] for f in found] == ["train_replica_count"] and "--nnodes 1" in found[0]
    monkeypatch.setattr(specs, "task_args", lambda p, **kw: ["--nnodes", "2", "--nproc-per-node", "1"])
    (gpus,) = lines(train_preset="a100-40gb-2x2")
    assert gpus.startswith("train_accelerator_count: each replica has 2 GPU(s)") and "--nproc-per-node 1" in gpus


# (replicas, processes per replica): the same global batch of 8, split 8 / 4+4 / 4+4 / 2+2+2+2
SHAPES = [(1, 1), (1, 2), (2, 1), (2, 2)]
LOSS_RTOL = 1e-6  # relative difference of the final train loss from the 1-process run
WEIGHT_ATOL = 1e-4  # largest absolute difference of any weight from the 1-process run (weights are ~0.1)


def _weights(stack: LocalStack, name: str, tmp: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out = f"{stack.bucket}/runs/{name}/model/model.safetensors"
    return load_file(str(storage.download_file(out, tmp / f"{name}.safetensors")))


@pytest.mark.slow
def test_replicas_and_processes_train_the_same_model_as_one_process(stack: LocalStack, tiny_uri: str,
                                                                   tmp_path: Path) -> None:
    rows = []
    for replicas, nproc in SHAPES:
        name = f"equiv-{replicas}x{nproc}"
        job, metrics, wall = _train(stack, tiny_uri, name, replicas=replicas, nproc=nproc)
        assert _state(stack, job) == "PIPELINE_STATE_SUCCEEDED", name
        assert (metrics["world_size"], metrics["nnodes"], metrics["nproc_per_node"]) == (replicas * nproc, replicas, nproc)
        rows.append({"shape": f"{replicas} x {nproc}", "name": name, "train_loss": metrics["train_loss"],
                     "global_step": metrics["global_step"], "wall_s": round(wall, 1)})
    base = _weights(stack, rows[0]["name"], tmp_path)
    for row in rows:
        w = _weights(stack, row["name"], tmp_path)
        row["max_weight_diff"] = max(float((w[k] - base[k]).abs().max()) for k in base)
        row["loss_rel_diff"] = abs(row["train_loss"] - rows[0]["train_loss"]) / rows[0]["train_loss"]
    print("\nEQUIVALENCE", json.dumps({"load_avg": os.getloadavg(), "rows": rows}))  # the figures in the docs
    assert len({r["global_step"] for r in rows}) == 1
    for row in rows[1:]:
        assert row["loss_rel_diff"] < LOSS_RTOL, rows
        assert row["max_weight_diff"] < WEIGHT_ATOL, rows
