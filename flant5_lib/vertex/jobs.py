"""Vertex AI actions through the official SDK: train, upload, deploy, predict, batch, cleanup.

Each function checks its inputs (`rules.check_request`, and `rules.require` before anything is paid for) before the
first request and hands the SDK the same values `specs.*_request` prints for `--dry-run`. SDK errors are left as
they are (notebooks and tests see the SDK's own exceptions); the CLI turns them into one line (`explain_api_error`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from flant5_lib import storage
from flant5_lib.config import Params, save_params
from flant5_lib.errors import CloudError
from flant5_lib.vertex import images, presets, rules, specs

log = logging.getLogger(__name__)


def init_sdk(params: Params) -> Any:
    """aiplatform.init from params; in local mode: REST transport, anonymous credentials, the stand-in's URL."""
    from google.cloud import aiplatform

    kwargs: dict[str, Any] = {"project": params.gcp_project, "location": params.gcp_region,
                              "staging_bucket": params.staging_bucket}
    if params.vertex_api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        kwargs.update(api_endpoint=params.vertex_api_endpoint, api_transport="rest")
        if params.vertex_mode == "local":
            kwargs["credentials"] = AnonymousCredentials()
    aiplatform.init(**kwargs)
    return aiplatform


def scheduling_strategy(params: Params) -> Any:
    """The SDK's Scheduling.Strategy for `scheduling_strategy` (None for standard: the request stays as before)."""
    if params.scheduling_strategy == "standard":
        return None
    from google.cloud.aiplatform.compat.types import custom_job as gca_custom_job

    return gca_custom_job.Scheduling.Strategy[params.scheduling_strategy.upper()]


def stage_inputs(params: Params) -> dict[str, str]:
    """Upload the resolved params YAML (and, for script jobs, the project's source archive) to the staging bucket."""
    out = {"params": specs.params_uri(params)}
    with tempfile.TemporaryDirectory() as tmp:
        local = save_params(params, Path(tmp) / "params.yaml")
        storage.upload_file(local, out["params"])
        if params.train_job_kind == "script":
            name, data = specs.build_project_archive()
            (Path(tmp) / name).write_bytes(data)
            out["project_package"] = specs.package_uri(params, name)
            storage.upload_file(Path(tmp) / name, out["project_package"])
    return out


def run_training(params: Params, *, wait: bool = True) -> tuple[Any, Any]:
    """Launch the training job; returns (job, registered Model or None). `wait=False` returns once it is created."""
    params = presets.resolve(params)
    rules.check_request(params, roles=("train",))
    rules.require(params)
    aiplatform = init_sdk(params)
    staged = stage_inputs(params)
    serving: dict[str, Any] = {}
    if params.serving_container_uri:
        serving = {"model_serving_container_image_uri": params.serving_container_uri,
                   "model_serving_container_predict_route": params.serving_predict_route,
                   "model_serving_container_health_route": params.serving_health_route,
                   "model_serving_container_ports": [params.serving_port]}
    args = specs.task_args(params, project_package=staged.get("project_package"))
    if params.train_job_kind == "script":
        job = aiplatform.CustomTrainingJob(
            display_name=params.train_display_name, script_path=str(Path(specs.__file__).with_name("task.py")),
            container_uri=images.train_image(params), requirements=images.script_requirements(params),
            staging_bucket=params.staging_bucket, **serving)
    else:
        job = aiplatform.CustomContainerTrainingJob(  # no command: the image's ENTRYPOINT runs the task
            display_name=params.train_display_name, container_uri=images.train_image(params),
            staging_bucket=params.staging_bucket, **serving)
    accel = {}
    if params.train_accelerator_type and params.train_accelerator_count:
        accel = {"accelerator_type": params.train_accelerator_type, "accelerator_count": params.train_accelerator_count}
    launch = job.run if wait else job.submit  # submit: created, not awaited (the CLI can exit at once)
    model = launch(
        args=args, replica_count=params.train_replica_count, machine_type=params.train_machine_type, **accel,
        base_output_dir=specs.train_output_dir(params), service_account=params.service_account,
        tensorboard=params.tensorboard_resource, model_display_name=params.model_display_name if serving else None,
        scheduling_strategy=scheduling_strategy(params), restart_job_on_worker_restart=False)
    return job, model if wait else None


def upload_model(params: Params, artifact_uri: str | None = None) -> Any:
    """Register a model folder in gs:// with the project's serving container."""
    rules.check_request(params)
    rules.require(params)
    uri = artifact_uri or specs.model_artifact_uri(params)
    if not storage.is_gcs(uri):
        raise CloudError(f"model_artifact_uri: {uri!r} must be a gs://BUCKET/PATH folder holding the model")
    aiplatform = init_sdk(params)
    return aiplatform.Model.upload(
        display_name=params.model_display_name, artifact_uri=uri,
        serving_container_image_uri=images.serving_image(params),
        serving_container_predict_route=params.serving_predict_route,
        serving_container_health_route=params.serving_health_route,
        serving_container_ports=[params.serving_port],
        upload_request_timeout=params.vertex_request_timeout_s, sync=True)


def find_models(params: Params) -> list[Any]:
    aiplatform = init_sdk(params)
    found = aiplatform.Model.list(filter=f'display_name="{params.model_display_name}"')
    return sorted(found, key=lambda m: m.create_time, reverse=True)


def find_endpoints(params: Params) -> list[Any]:
    aiplatform = init_sdk(params)
    return list(aiplatform.Endpoint.list(filter=f'display_name="{params.endpoint_display_name}"'))


def latest_model(params: Params, model_name: str | None = None) -> Any:
    aiplatform = init_sdk(params)
    if model_name:
        return aiplatform.Model(model_name)
    models = find_models(params)
    if not models:
        raise CloudError(f"model_display_name: no model named {params.model_display_name!r}; run `flant5 vertex upload` first")
    return models[0]


def get_endpoint(params: Params, endpoint_name: str | None = None) -> Any:
    aiplatform = init_sdk(params)
    if endpoint_name:
        return aiplatform.Endpoint(endpoint_name)
    found = find_endpoints(params)
    if not found:
        raise CloudError(f"endpoint_display_name: no endpoint named {params.endpoint_display_name!r}; "
                         "run `flant5 vertex deploy` first")
    return found[0]


def deploy_model(params: Params, model: Any) -> Any:
    """Deploy to the endpoint named endpoint_display_name (created if missing); returns the Endpoint."""
    rules.check_request(params, roles=("deploy",))
    image = model.gca_resource.container_spec.image_uri  # the image the model was uploaded with
    problem = rules.serving_hardware_problem(image, params.deploy_accelerator_type, params.deploy_machine_type)
    if problem:
        raise CloudError(f"{model.resource_name}: {problem}")
    aiplatform = init_sdk(params)
    found = find_endpoints(params)
    endpoint = found[0] if found else aiplatform.Endpoint.create(
        display_name=params.endpoint_display_name, create_request_timeout=params.vertex_request_timeout_s, sync=True)
    accel = {}
    if params.deploy_accelerator_type and params.deploy_accelerator_count:
        accel = {"accelerator_type": params.deploy_accelerator_type, "accelerator_count": params.deploy_accelerator_count}
    endpoint.deploy(
        model=model, deployed_model_display_name=params.model_display_name, machine_type=params.deploy_machine_type,
        min_replica_count=params.deploy_min_replicas, max_replica_count=params.deploy_max_replicas, **accel,
        traffic_percentage=params.deploy_traffic_percentage, service_account=params.service_account,
        deploy_request_timeout=params.vertex_request_timeout_s, spot=params.deploy_spot, sync=True)
    return endpoint


def predict(params: Params, endpoint: Any, dialogues: list[str]) -> list[Any]:
    """Summaries for a list of dialogues from a deployed endpoint."""
    if not dialogues:
        raise CloudError("predict: no dialogues given; pass --dialogue TEXT or --file dialogues.jsonl")
    instances = [{"dialogue": d} for d in dialogues]
    return list(endpoint.predict(instances=instances, timeout=params.predict_timeout_s).predictions)


def batch_predict(params: Params, model: Any, input_uri: str, output_uri: str, *, sync: bool = True) -> Any:
    """A BatchPredictionJob over a gs:// JSONL file of {"dialogue": ...} lines, same serving container."""
    rules.check_request(params, roles=("batch",))
    for name, uri in (("--input", input_uri), ("--output", output_uri)):
        if not storage.is_gcs(uri):
            raise CloudError(f"{name}: {uri!r} must be a gs:// URI")
    aiplatform = init_sdk(params)
    accel = {}
    if params.batch_accelerator_type and params.batch_accelerator_count:
        accel = {"accelerator_type": params.batch_accelerator_type, "accelerator_count": params.batch_accelerator_count}
    return aiplatform.BatchPredictionJob.create(
        job_display_name=params.batch_display_name, model_name=model, instances_format="jsonl",
        predictions_format="jsonl", gcs_source=input_uri, gcs_destination_prefix=output_uri,
        machine_type=params.batch_machine_type, **accel, starting_replica_count=params.batch_replica_count,
        max_replica_count=params.batch_replica_count, service_account=params.service_account, sync=sync)


def cleanup(params: Params) -> dict[str, list[str]]:
    """Undeploy and delete the named endpoints, then delete the named models; running it twice is harmless."""
    rules.check_request(params, need=rules.API_SETTINGS)
    done: dict[str, list[str]] = {"endpoints": [], "models": []}
    for endpoint in find_endpoints(params):
        endpoint.undeploy_all(sync=True)
        endpoint.delete(sync=True)
        done["endpoints"].append(endpoint.resource_name)
    for model in find_models(params):
        model.delete(sync=True)
        done["models"].append(model.resource_name)
    log.info("deleted %d endpoint(s) and %d model(s)", len(done["endpoints"]), len(done["models"]))
    return done


def download_artifacts(params: Params, uri: str | None = None, local: str | None = None) -> Path:
    """Fetch a trained model from gs:// into the serving folder (serving/model by default)."""
    src = uri or specs.model_artifact_uri(params)
    if "<" in src:
        raise CloudError("model_artifact_uri: unknown; pass --uri gs://... or set staging_bucket/train_output_dir")
    return storage.download_dir(src, local or params.artifacts_local_dir)


def upload_artifacts(params: Params, local: str | None = None, uri: str | None = None) -> str:
    dest = uri or specs.model_artifact_uri(params)
    if "<" in dest:
        raise CloudError("model_artifact_uri: unknown; pass --uri gs://... or set staging_bucket/train_output_dir")
    return storage.upload_dir(local or params.artifacts_local_dir, dest)
