"""Spot training end to end: the real Vertex SDK, the stand-in preempting the replica (SIGTERM, grace, SIGKILL,
restart with the same environment), the trainer saving on SIGTERM to AIP_CHECKPOINT_DIR in the storage emulator
and resuming on its own; plus the rules, the refusals and the standard-vs-Spot estimate."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flant5_lib import storage
from flant5_lib.config import load_params
from flant5_lib.errors import CloudError
from flant5_lib.train.loop import EXIT_PREEMPTED
from flant5_lib.vertex import estimate, jobs, rules, specs
from flant5_lib.vertex.localstack import LocalStack
from flant5_lib.vertex.localstack.preempt import PreemptPlan, strategy_name
from tests.helpers.vertex import fast_stack

pytestmark = pytest.mark.timeout(900)

PREEMPTIONS = 3
# Only the SIGTERM handler and the end of training write checkpoints (save_steps beyond max_steps, no timed save):
# every resume below starts from a checkpoint written on the preemption notice.
SPOT_TRAIN = {"dataset": "synthetic:160", "model_name": "tiny", "max_steps": 24, "eval_strategy": "no",
              "per_device_train_batch_size": 8, "logging_steps": 2, "save_steps": 1000, "save_every_minutes": None,
              "max_source_length": 128, "max_target_length": 32, "learning_rate": 3e-3}


@pytest.fixture(scope="module")
def spot_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # the clock starts at the replica's first logged loss: each replica is preempted while it trains, however slow
    # this machine is; the grace period is an upper bound (a replica that saved in time exits at once)
    plan = PreemptPlan(after_s=0.0, times=PREEMPTIONS, grace_s=120.0, start_on="'loss'")
    with fast_stack(tmp_path_factory.mktemp("spotstack"), preempt=plan) as st:
        yield st


def _weights(out_dir: str, tmp: Path) -> str:
    local = storage.download_file(f"{out_dir}/model/model.safetensors", tmp / f"{hashlib.md5(out_dir.encode()).hexdigest()}.st")
    return hashlib.sha256(local.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_spot_job_preempted_three_times_ends_bit_identical_to_an_uninterrupted_one(
        spot_stack: LocalStack, tmp_path: Path) -> None:
    base = load_params(None, {**spot_stack.params_overrides(), **SPOT_TRAIN})
    spot = base.with_overrides(scheduling_strategy="spot", train_display_name="spot-run")
    job, _ = jobs.run_training(spot, wait=False)
    (req,) = spot_stack.requests("/trainingPipelines", method="POST")
    assert strategy_name(req["body"]["trainingTaskInputs"]) == "SPOT"  # the SDK's enum, as the SDK sent it
    seen = set()
    deadline = time.monotonic() + 800
    while True:
        with spot_stack.backend.lock:
            state = spot_stack.backend.pipelines[job.resource_name.rsplit("/", 1)[1]]["state"]
            restarts = len(spot_stack.backend.restarts.get(job.resource_name, []))
        seen.add((state, restarts))
        if state not in ("PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    log_text = (spot_stack.workdir / "jobs" / f"pipeline-{job.resource_name.rsplit('/', 1)[1]}.log").read_text(errors="replace")
    assert state == "PIPELINE_STATE_SUCCEEDED", log_text[-3000:]
    # the job stayed RUNNING across every restart, as Vertex keeps it
    assert {r for s, r in seen if s == "PIPELINE_STATE_RUNNING"} >= set(range(PREEMPTIONS))
    rows = spot_stack.backend.restarts[job.resource_name]
    assert len(rows) == PREEMPTIONS
    assert all(r["exit_code"] == EXIT_PREEMPTED and not r["sigkill"] for r in rows)  # saved inside the grace period

    # each notice produced a complete checkpoint, and the next replica resumed from exactly that step: no work lost
    saved = [int(s) for s in re.findall(r"SIGTERM save: checkpoint-(\d+) complete", log_text)]
    resumed = [int(s) for s in re.findall(r"resuming automatically from \S+checkpoint-(\d+)", log_text)]
    assert len(saved) == PREEMPTIONS and resumed == saved and saved == sorted(set(saved)), (saved, resumed)
    assert log_text.count("was preempted (Spot)") == PREEMPTIONS

    out_spot = specs.train_output_dir(spot)
    names = storage.list_blobs(f"{out_spot}/checkpoints")
    assert "checkpoint-24/flant5_checkpoint.json" in names
    assert not any(n.startswith(f"checkpoint-{saved[0]}/") for n in names)  # pruned on Cloud Storage too

    plain = base.with_overrides(train_display_name="plain-run")  # scheduling standard: never preempted
    jobs.run_training(plain)
    assert job.resource_name in spot_stack.backend.restarts and len(spot_stack.backend.restarts) == 1
    assert _weights(out_spot, tmp_path) == _weights(specs.train_output_dir(plain), tmp_path)

    # the same output folder with other parameters: the restarted code refuses the checkpoint, the job fails with
    # Vertex's error naming the field, and the finished run's files are untouched
    before = storage.list_blobs(f"{out_spot}/checkpoints")
    clash = spot.with_overrides(learning_rate=1e-3, scheduling_strategy="standard")
    with pytest.raises(RuntimeError, match="non-zero status of 2") as err:
        jobs.run_training(clash)
    assert "learning_rate" in str(err.value)
    assert storage.list_blobs(f"{out_spot}/checkpoints") == before


def test_scheduling_rules_name_the_field_and_the_fix() -> None:
    assert rules.scheduling_problem("spot", "a2-highgpu-1g", "NVIDIA_TESLA_A100", "us-central1") is None
    assert rules.scheduling_problem("SPOT", "n1-standard-4", None, "us-central1") is None  # CPU jobs can be Spot
    flex_cpu = rules.scheduling_problem("flex_start", "n1-standard-4", None, "us-central1")
    assert flex_cpu.startswith("scheduling_strategy: flex_start needs a GPU")
    assert "NVIDIA_TESLA_T4" in rules.scheduling_problem("flex_start", "n1-standard-8", "NVIDIA_TESLA_T4", "us-central1")
    assert "gcp_region europe-west1" in rules.scheduling_problem("spot", "a2-highgpu-1g", "NVIDIA_TESLA_A100", "europe-west1")
    assert "TPU" in rules.scheduling_problem("spot", "ct5lp-hightpu-4t", None, "us-central1")
    p = load_params("params/vertex-a100.yaml", {"scheduling_strategy": "flex_start", "train_preset": None,
                                                 "train_machine_type": "n1-standard-8", "train_accelerator_type": "NVIDIA_TESLA_T4",
                                                 "train_accelerator_count": 1})
    assert any(line.startswith("scheduling_strategy:") for line in rules.problems(p))


def test_the_stand_in_refuses_flex_start_without_a_gpu_as_vertex_does(tmp_path: Path) -> None:
    from google.api_core import exceptions as gexc

    with fast_stack(tmp_path / "stack") as stack:
        p = load_params(None, {**stack.params_overrides(), **SPOT_TRAIN, "scheduling_strategy": "flex_start",
                               "train_machine_type": "n1-standard-4", "train_accelerator_type": "NVIDIA_TESLA_T4",
                               "train_accelerator_count": 1})
        aiplatform = jobs.init_sdk(p)
        job = aiplatform.CustomContainerTrainingJob(display_name="flex", container_uri=f"{stack.registry()}/flant5-train:latest",
                                                    staging_bucket=p.staging_bucket)
        with pytest.raises(gexc.BadRequest, match="scheduling.strategy: FLEX_START"):
            job.run(args=["--params", "gs://x/p.yaml"], machine_type="n1-standard-4", accelerator_type="NVIDIA_TESLA_T4",
                    accelerator_count=1, base_output_dir=f"{stack.bucket}/flex", scheduling_strategy=jobs.scheduling_strategy(p))
        assert not stack.backend.pipelines  # refused before anything ran


def test_estimate_shows_standard_against_spot_with_the_time_preemptions_add() -> None:
    p = load_params("params/vertex-a100.yaml", {"max_train_samples": 20000, "num_train_epochs": 3})
    prices = estimate.load_prices()
    assert prices["spot_table"]["read_on"].startswith("2026-12-07")
    e = estimate.estimate(p, prices, preemptions_per_hour=0.0)
    st, sp = e["standard_vs_spot"]["standard"], e["standard_vs_spot"]["spot"]
    assert sp["usd_per_hour"] < st["usd_per_hour"] and sp["extra_hours"] == 0 and sp["total_hours"] == st["total_hours"]
    busy = estimate.estimate(p, prices, preemptions_per_hour=2.0)["standard_vs_spot"]["spot"]
    restart_h = (prices["startup_minutes"] + prices["spot_table"]["lost_minutes_per_preemption"]) / 60
    running = e["train_hours"] / (1 - 2.0 * restart_h)
    assert busy["extra_hours"] > 0 and abs(busy["extra_hours"] - (running - e["train_hours"])) < 0.02  # train_hours is rounded
    assert abs(busy["expected_preemptions"] - 2.0 * running) < 0.03
    chosen = estimate.estimate(p.with_overrides(scheduling_strategy="spot"), prices, preemptions_per_hour=2.0)
    assert chosen["usd_per_hour"] == busy["usd_per_hour"] and chosen["total_hours"] == busy["total_hours"]
    assert "standard ~$" in estimate.format_estimate(chosen) and "vs spot ~$" in estimate.format_estimate(chosen)
    with pytest.raises(CloudError, match="never finish"):
        estimate.estimate(p.with_overrides(scheduling_strategy="spot"), prices, preemptions_per_hour=10.0)


def test_deploy_spot_goes_into_the_deploy_request() -> None:
    p = load_params("params/vertex-a100.yaml", {"deploy_spot": True})
    assert specs.deploy_request(p)["body"]["deployedModel"]["dedicatedResources"]["spot"] is True
    assert "spot" not in specs.deploy_request(p.with_overrides(deploy_spot=False))["body"]["deployedModel"]["dedicatedResources"]
