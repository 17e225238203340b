"""The original Vertex sample's calls, literally, with the real SDK against the stand-in (issue 10's "Tests").

CustomTrainingJob(...).run on a2-highgpu-1g + 1 x A100, Model.upload with the sample's routes and port,
model.deploy on the sample's GPU machine, endpoint.predict([[dialogue]]) and with parameters, curl-style REST
(:predict and :rawPredict), batch prediction list/get/cancel, undeploy_all / delete, including the model that
job.run registered (the sample's cleanup leaves it behind). Nothing is mocked: a tiny model is trained and served.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from google.api_core import exceptions as gexc

from flant5_lib import storage
from flant5_lib.config import load_params
from flant5_lib.vertex import images, rules
from flant5_lib.vertex import jobs as vertex_jobs
from flant5_lib.vertex import specs as vertex
from flant5_lib.vertex.localstack import LocalStack

QUICK_TRAIN = {"dataset": "synthetic:64", "model_name": "tiny", "max_steps": 5, "eval_strategy": "no",
               "per_device_train_batch_size": 8, "logging_steps": 1, "max_new_tokens": 24}
DIALOGUE = "Amy: Is the car fixed?\nBen: Tomorrow, they said."

pytestmark = pytest.mark.slow  # trains and serves a model: about a minute on 2 cores



def _local_summaries(model_dir: Path, dialogues: list[str], **generation: int) -> list[str]:
    """What the serving engine (serve_backend's default) gives here for this model, with its own preprocessing."""
    from flant5_lib.inference import summarize_batches
    from flant5_lib.preprocess import load_preprocessing
    from flant5_lib.serve.backends import load_backend

    params = load_preprocessing(model_dir, load_params())
    engine = load_backend(model_dir, params, device="cpu")
    texts, _ = summarize_batches(lambda ids, kw: (engine.generate(ids, kw), [False] * len(ids)), engine.tokenizer,
                                 dialogues, params, progress=False, **generation)
    return texts


def test_the_samples_calls_behave_as_on_vertex(stack: LocalStack, tmp_path: Path) -> None:
    params = load_params(None, {**stack.params_overrides(), **QUICK_TRAIN, "train_job_kind": "script",
                                "deploy_machine_type": "a2-highgpu-1g", "deploy_accelerator_type": "NVIDIA_TESLA_A100",
                                "deploy_accelerator_count": 1, "serving_container_uri": None})
    rules.require(params)  # the sample's hardware with the project's images passes preflight
    aiplatform = vertex_jobs.init_sdk(params)
    staged = vertex_jobs.stage_inputs(params)
    serving_image = images.serving_image(params)
    assert serving_image.endswith("/flant5-serve-gpu:latest")  # the A100 deployment gets the CUDA image

    job = aiplatform.CustomTrainingJob(
        display_name="sample-train", script_path=str(Path(vertex.__file__).with_name("task.py")),
        container_uri=images.train_image(params), requirements=images.script_requirements(params),
        model_serving_container_image_uri=serving_image, model_serving_container_predict_route="/predict",
        model_serving_container_health_route="/health", model_serving_container_ports=[8080])
    out_dir = f"{stack.bucket}/runs/sample"
    registered = job.run(args=vertex.task_args(params, project_package=staged["project_package"]), replica_count=1,
                         machine_type="a2-highgpu-1g", accelerator_type="NVIDIA_TESLA_A100", accelerator_count=1,
                         base_output_dir=out_dir, model_display_name="sample-model-from-job", sync=True)
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED" and registered is not None
    assert "model.safetensors" in " ".join(storage.list_blobs(f"{out_dir}/model"))

    model = aiplatform.Model.upload(
        display_name="sample-model", artifact_uri=f"{out_dir}/model", serving_container_image_uri=serving_image,
        serving_container_predict_route="/predict", serving_container_health_route="/health",
        serving_container_ports=[8080], sync=True)
    endpoint = model.deploy(machine_type="a2-highgpu-1g", accelerator_type="NVIDIA_TESLA_A100", accelerator_count=1,
                            sync=True)
    (deploy_req,) = stack.requests(":deployModel")
    spec = deploy_req["body"]["deployedModel"]["dedicatedResources"]["machineSpec"]
    assert spec["machineType"] == "a2-highgpu-1g" and int(spec["acceleratorCount"]) == 1

    nested = endpoint.predict([[DIALOGUE]]).predictions  # each instance a one-element list of dialogues
    assert len(nested) == 1 and len(nested[0]) == 1 and isinstance(nested[0][0], str) and nested[0][0].strip()
    flat = endpoint.predict([DIALOGUE], parameters={"num_beams": 2, "max_new_tokens": 16}).predictions
    assert len(flat) == 1 and isinstance(flat[0], str) and flat[0].strip()
    assert flat == _local_summaries(storage.download_dir(f"{out_dir}/model", tmp_path / "model"), [DIALOGUE],
                                    num_beams=2, max_new_tokens=16)  # the parameters reached the model that was trained
    with pytest.raises(gexc.BadRequest, match="num_beams"):  # the container's 4xx reaches the SDK as 400
        endpoint.predict([DIALOGUE], parameters={"num_beams": 2.5})

    # curl-style REST on the same endpoint: :predict, and :rawPredict which passes bodies and statuses through
    url = f"{stack.api_endpoint}/v1/{endpoint.resource_name}"
    r = httpx.post(f"{url}:predict", json={"instances": [{"dialogue": DIALOGUE}]}, timeout=60)
    assert r.status_code == 200 and r.json()["predictions"] == [nested[0][0]]  # same model, same greedy summary
    r = httpx.post(f"{url}:rawPredict", content=json.dumps({"instances": [DIALOGUE]}).encode(),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200 and r.json()["predictions"] == [nested[0][0]]
    r = httpx.post(f"{url}:rawPredict", content=b'{"instances": 7}', headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and "instances" in r.text

    storage.write_text(f"{stack.bucket}/batch/in.jsonl", json.dumps({"dialogue": DIALOGUE}) + "\n")
    batch = aiplatform.BatchPredictionJob.create(
        job_display_name="sample-batch", model_name=model, instances_format="jsonl", predictions_format="jsonl",
        gcs_source=f"{stack.bucket}/batch/in.jsonl", gcs_destination_prefix=f"{stack.bucket}/batch/out",
        machine_type="n1-standard-4", sync=True)
    assert batch.state.name == "JOB_STATE_SUCCEEDED"
    listed = aiplatform.BatchPredictionJob.list(filter='display_name="sample-batch"')
    assert [b.resource_name for b in listed] == [batch.resource_name]
    assert aiplatform.BatchPredictionJob(batch.resource_name).output_info.gcs_output_directory
    batch.cancel()  # a finished job stays finished
    assert aiplatform.BatchPredictionJob(batch.resource_name).state.name == "JOB_STATE_SUCCEEDED"

    endpoint.undeploy_all(sync=True)
    endpoint.delete(sync=True)
    model.delete(sync=True)
    leftover = aiplatform.Model.list()
    assert [m.display_name for m in leftover] == ["sample-model-from-job"]  # what the sample's cleanup misses
    registered.delete(sync=True)
    assert aiplatform.Model.list() == [] and aiplatform.Endpoint.list() == [] and not stack.backend.deployments
