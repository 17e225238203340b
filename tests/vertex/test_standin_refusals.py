"""The stand-in refuses what Vertex refuses, with Vertex's error, through the real SDK (one test per refusal).

One stand-in per module. Jobs here are tiny scripts (no training), so the module stays fast.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions as gexc

from flant5_lib import storage
from flant5_lib.config import load_params
from flant5_lib.vertex import images
from flant5_lib.vertex import jobs as vertex_jobs
from flant5_lib.vertex.localstack import LocalStack, start_local_stack
from tests.helpers.vertex import fast_stack

OLD_DEFAULT = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with fast_stack(tmp_path_factory.mktemp("standin"), project="proj-7", region="us-central1", bucket="gs://bkt-7") as st:
        yield st


@pytest.fixture(scope="module")
def aiplatform(stack: LocalStack) -> object:
    return vertex_jobs.init_sdk(load_params(None, stack.params_overrides()))


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job script that proves it ran: it writes its argument to AIP_MODEL_DIR."""
    path = tmp_path_factory.mktemp("script") / "task.py"
    path.write_text(textwrap.dedent("""
        import os, sys
        from flant5_lib import storage
        storage.write_text(os.environ["AIP_MODEL_DIR"].rstrip("/") + "/ran.txt", sys.argv[1])
    """))
    return str(path)


def _custom_job(aiplatform: object, script: str, image: str, **kw: object) -> object:
    return aiplatform.CustomJob.from_local_script(  # type: ignore[attr-defined]
        display_name=kw.pop("display_name", "job"), script_path=script, container_uri=image, args=["hello"],
        machine_type=kw.pop("machine_type", "n1-standard-4"), **kw)


def test_custom_job_from_local_script_runs_on_the_project_image(stack: LocalStack, aiplatform: object,
                                                                 script: str) -> None:
    image = f"{stack.registry()}/{images.TRAIN_IMAGE}:latest"
    job = _custom_job(aiplatform, script, image, display_name="ok-job", labels={"suite": "refusals"})
    job.run(sync=True)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.resource_name.startswith("projects/proj-7/locations/us-central1/customJobs/")
    out = job.job_spec.base_output_directory.output_uri_prefix
    assert storage.read_text(f"{out}/model/ran.txt") == "hello"
    again = aiplatform.CustomJob.get(job.resource_name)  # type: ignore[attr-defined]
    assert again.display_name == "ok-job"


def test_prebuilt_image_job_fails_naming_the_version_conflict(aiplatform: object, script: str) -> None:
    job = _custom_job(aiplatform, script, OLD_DEFAULT, requirements=["transformers>=5,<6"])
    with pytest.raises(RuntimeError, match="torch 2.4") as err:
        job.run(sync=True)
    assert "torch>=2.6" in str(err.value) and job.state.name == "JOB_STATE_FAILED"


def test_image_the_stand_in_cannot_emulate_fails_clearly(aiplatform: object, script: str) -> None:
    job = _custom_job(aiplatform, script, "registry.example/team/their-trainer:3")
    with pytest.raises(RuntimeError, match="cannot emulate container image registry.example/team/their-trainer:3"):
        job.run(sync=True)


def test_machine_and_accelerator_that_do_not_match_are_invalid_argument(aiplatform: object, script: str) -> None:
    job = _custom_job(aiplatform, script, OLD_DEFAULT, machine_type="a2-highgpu-1g",
                      accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1)
    with pytest.raises(gexc.BadRequest, match="NVIDIA_TESLA_T4.*not supported for machine type a2-highgpu-1g"):
        job.run(sync=True)


def test_impossible_accelerator_count_is_invalid_argument(aiplatform: object, script: str) -> None:
    job = _custom_job(aiplatform, script, OLD_DEFAULT, machine_type="a2-highgpu-1g",
                      accelerator_type="NVIDIA_TESLA_A100", accelerator_count=2)
    with pytest.raises(gexc.BadRequest, match="has exactly 1"):
        job.run(sync=True)


def test_tensorboard_without_service_account_is_refused(stack: LocalStack, aiplatform: object, script: str) -> None:
    tb = stack.params_overrides()["tensorboard_resource"]
    job = _custom_job(aiplatform, script, f"{stack.registry()}/flant5-train:latest")
    with pytest.raises(gexc.BadRequest, match="service_account must be specified when uploading to TensorBoard"):
        job.run(tensorboard=tb, sync=True)


def test_unknown_tensorboard_is_not_found(stack: LocalStack, aiplatform: object, script: str) -> None:
    job = _custom_job(aiplatform, script, f"{stack.registry()}/flant5-train:latest")
    with pytest.raises(gexc.NotFound, match="tensorboards/404"):
        job.run(tensorboard="projects/proj-7/locations/us-central1/tensorboards/404",
                service_account=stack.params_overrides()["service_account"], sync=True)


def test_list_filters_on_labels_and_display_name_and_orders(stack: LocalStack, aiplatform: object) -> None:
    aip = aiplatform
    made = []
    for name, run in (("m-a", "a"), ("m-b", "b"), ("m-c", "a")):
        made.append(aip.Model.upload(display_name=name, artifact_uri=f"{stack.bucket}/none/{name}",  # type: ignore
                                     serving_container_image_uri=f"{stack.registry()}/flant5-serve:latest",
                                     labels={"run": run}, sync=True))
    try:
        got = aip.Model.list(filter='labels.run="a"', order_by="create_time desc")  # type: ignore[attr-defined]
        assert [m.display_name for m in got] == ["m-c", "m-a"]
        got = aip.Model.list(filter='labels.run="a" AND display_name="m-a"')  # type: ignore[attr-defined]
        assert [m.display_name for m in got] == ["m-a"]
        assert [m.display_name for m in aip.Model.list(filter='labels.run!="a"')] == ["m-b"]  # type: ignore
        with pytest.raises(gexc.BadRequest, match="Unsupported field"):
            aip.Model.list(filter='colour="red"')  # type: ignore[attr-defined]
    finally:
        for m in made:
            m.delete()


def test_region_and_project_are_carried_and_others_refused(stack: LocalStack) -> None:
    api = stack.api_endpoint
    r = httpx.get(f"{api}/v1/projects/proj-7/locations/europe-west4/models")
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "europe-west4" in r.json()["error"]["message"]
    r = httpx.get(f"{api}/v1/projects/local-project/locations/us-central1/models")
    assert r.status_code == 403
    assert stack.params_overrides()["staging_bucket"] == "gs://bkt-7" and storage.list_blobs("gs://bkt-7") is not None


def test_a_gpu_the_region_does_not_offer_is_refused(tmp_path: Path) -> None:
    with start_local_stack(tmp_path, region="europe-west1") as st:  # no A100 there (params/tables/accelerators.yaml)
        body = {"displayName": "j", "jobSpec": {"workerPoolSpecs": [{
            "machineSpec": {"machineType": "a2-highgpu-1g", "acceleratorType": "NVIDIA_TESLA_A100",
                            "acceleratorCount": 1}, "replicaCount": "1",
            "containerSpec": {"imageUri": f"{st.registry()}/flant5-train:latest"}}]}}
        r = httpx.post(f"{st.api_endpoint}/v1/projects/local-project/locations/europe-west1/customJobs", json=body)
        assert r.status_code == 400 and "not supported in location europe-west1" in r.json()["error"]["message"]
        assert st.params_overrides()["image_registry"].startswith("europe-west1-docker.pkg.dev/local-project/")


def test_deploying_an_image_the_stand_in_cannot_emulate_fails_clearly(stack: LocalStack, aiplatform: object) -> None:
    model = aiplatform.Model.upload(  # type: ignore[attr-defined]
        display_name="torchserve", artifact_uri=f"{stack.bucket}/none/ts",
        serving_container_image_uri="us-docker.pkg.dev/vertex-ai/prediction/pytorch-cpu.2-4:latest", sync=True)
    before = {ep.resource_name for ep in aiplatform.Endpoint.list()}  # type: ignore[attr-defined]
    try:
        with pytest.raises(gexc.FailedPrecondition, match="cannot emulate serving image.*torchserve"):
            model.deploy(machine_type="n1-standard-4", sync=True)
    finally:
        # this test's own resources only: the endpoint model.deploy created, and the model (other tests' stay)
        mine = [ep for ep in aiplatform.Endpoint.list() if ep.resource_name not in before]  # type: ignore[attr-defined]
        deployed = [d for ep in mine for d in ep.list_models()]
        for ep in mine:
            ep.delete(force=True)
        model.delete()
    assert len(mine) == 1 and deployed == []  # the endpoint was made, the model never went onto it


def test_deploying_a_cpu_image_model_on_a_gpu_machine_stops_before_any_request(stack: LocalStack,
                                                                               aiplatform: object) -> None:
    from flant5_lib.errors import CloudError

    model = aiplatform.Model.upload(  # type: ignore[attr-defined]
        display_name="cpu-model", artifact_uri=f"{stack.bucket}/none/cpu",
        serving_container_image_uri=f"{stack.registry()}/flant5-serve:latest", sync=True)
    params = load_params(None, {**stack.params_overrides(), "deploy_machine_type": "a2-highgpu-1g",
                                "deploy_accelerator_type": "NVIDIA_TESLA_A100", "deploy_accelerator_count": 1})
    stack.clear_requests()
    try:
        with pytest.raises(CloudError, match="CPU-only torch.*NVIDIA_TESLA_A100"):
            vertex_jobs.deploy_model(params, model)
        assert stack.requests("endpoints") == []  # no endpoint created, nothing deployed
    finally:
        model.delete()


def test_traffic_split_refusals_as_vertex_answers(stack: LocalStack, aiplatform: object) -> None:
    """Shares not summing to 100, a deployed model the endpoint lacks, a share outside 0..100: 400 before any
    server starts (the REST body, as any client sends it: the SDK checks the sum itself too)."""
    endpoint = aiplatform.Endpoint.create(display_name="split-refusals", sync=True)  # type: ignore[attr-defined]
    try:
        api = f"{stack.api_endpoint}/v1/{endpoint.resource_name}"
        deployed = {"model": "projects/proj-7/locations/us-central1/models/none", "dedicatedResources": {}}
        for split, message in (({"0": 60}, "needs to be 100"), ({"0": 50, "777": 50}, "Deployed model 777"),
                               ({"0": 150}, "from 0 to 100")):
            r = httpx.post(f"{api}:deployModel", json={"deployedModel": deployed, "trafficSplit": split})
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
        r = httpx.patch(f"{api}?updateMask=traffic_split", json={"trafficSplit": {"777": 100}})
        assert r.status_code == 400 and "Deployed model 777" in r.json()["error"]["message"]
        assert stack.requests("deployModel") and not endpoint.list_models()
    finally:
        endpoint.delete(force=True)


def test_predictions_follow_the_split_deterministically() -> None:
    """Every 100 consecutive predictions split exactly by the shares, interleaved (not 90 then 10)."""
    from flant5_lib.vertex.localstack import traffic

    picks = [traffic.pick({"old": 90, "new": 10}, n) for n in range(200)]
    assert picks[:100].count("new") == 10 and picks[100:].count("new") == 10
    assert "new" in picks[:20] and picks == [traffic.pick({"new": 10, "old": 90}, n) for n in range(200)]
    assert {traffic.pick({"a": 100, "b": 0}, n) for n in range(100)} == {"a"}


def test_tensorboard_instances_are_created_got_and_listed(stack: LocalStack, aiplatform: object) -> None:
    """The original sample creates its own TensorBoard: it then exists for get, list and a job's check (the list is
    the stand-in's set of known names, the one `checks.tensorboard` refuses unknown names by)."""
    tb = aiplatform.Tensorboard.create(display_name="samsum-tb")  # type: ignore[attr-defined]
    assert tb.resource_name.startswith("projects/proj-7/locations/us-central1/tensorboards/")
    assert aiplatform.Tensorboard(tb.resource_name).display_name == "samsum-tb"  # type: ignore[attr-defined]
    names = {t.resource_name for t in aiplatform.Tensorboard.list()}  # type: ignore[attr-defined]
    assert {tb.resource_name, stack.params_overrides()["tensorboard_resource"]} <= names
    r = httpx.post(f"{stack.api_endpoint}/v1/projects/proj-7/locations/us-central1/tensorboards", json={})
    assert r.status_code == 400 and "displayName" in r.json()["error"]["message"]
