"""Vertex AI requests built from `Params`: resource paths, where inputs are staged, and the exact REST bodies.

Every `flant5 vertex` command first builds its request here. `--dry-run` prints it; the real run
hands the same values to the Vertex SDK (`jobs`), and tests compare what the SDK sent to the
local stand-in with these bodies. The checks that run before any request live in `rules`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import tarfile
from importlib import metadata
from pathlib import Path
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError
from flant5_lib.vertex import images, presets
from flant5_lib.vertex.tables import PROJECT_ROOT

log = logging.getLogger(__name__)

TASK_MODULE = "flant5_lib.vertex.task"
CUSTOM_TASK_SCHEMA = "gs://google-cloud-aiplatform/schema/trainingjob/definition/custom_task_1.0.0.yaml"
_DIST_NAME = "flant5-lib"


def placeholder(value: Any, name: str) -> Any:
    """The value, or '<name>' when unset: dry runs show what a real run still needs."""
    return f"<{name}>" if value in (None, "") else value


def parent(params: Params) -> str:
    return f"projects/{placeholder(params.gcp_project, 'gcp_project')}/locations/{params.gcp_region}"


def api_base(params: Params) -> str:
    """REST root the SDK talks to (the stand-in's in local mode)."""
    if params.vertex_api_endpoint:
        return params.vertex_api_endpoint.rstrip("/")
    return f"https://{params.gcp_region}-aiplatform.googleapis.com"


def staging_root(params: Params) -> str:
    return placeholder(params.staging_bucket, "staging_bucket").rstrip("/")


def train_output_dir(params: Params) -> str:
    """base_output_dir: Vertex puts AIP_MODEL_DIR at <this>/model, checkpoints at <this>/checkpoints."""
    return (params.train_output_dir or f"{staging_root(params)}/runs/{params.train_display_name}").rstrip("/")


def model_artifact_uri(params: Params) -> str:
    return (params.model_artifact_uri or f"{train_output_dir(params)}/model").rstrip("/")


def params_uri(params: Params) -> str:
    """Where the job reads its resolved params: under the staging bucket, which is already the project's prefix."""
    return f"{staging_root(params)}/params/{params.train_display_name}.yaml"


def container_spec(params: Params) -> dict[str, Any]:
    """Serving container of Model.upload (REST field names): the image matching the deploy hardware."""
    return {
        "imageUri": images.serving_image(params),
        "ports": [{"containerPort": params.serving_port}],
        "predictRoute": params.serving_predict_route,
        "healthRoute": params.serving_health_route,
    }


def machine_spec(machine: str, accelerator: str | None, count: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"machineType": machine}
    if accelerator and count:
        spec.update(acceleratorType=accelerator, acceleratorCount=count)
    return spec


# --- the project's source package (for 'script' jobs on a prebuilt image) -------------------------


def build_project_archive(root: Path = PROJECT_ROOT) -> tuple[str, bytes]:
    """(file name, bytes) of a reproducible source archive of the project (same sources -> same name)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise CloudError(f"{pyproject}: not found (flant5_lib is not a source checkout); "
                         "use train_job_kind: container with an image built from training/Dockerfile")
    files = [pyproject, *sorted((root / "flant5_lib").rglob("*.py"))]
    for extra in ("README.md", "constraints.txt", "LICENSE"):
        if (root / extra).is_file():
            files.append(root / extra)
    version = metadata.version(_DIST_NAME) if _has_dist() else "0"
    top = f"flant5_lib-{version}"
    buf = io.BytesIO()
    # gzip's header carries a timestamp too: mtime=0 there as well, so the same sources give the same bytes
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = {f.relative_to(root).as_posix(): f for f in files if "__pycache__" not in f.parts}
        if "README.md" not in names:
            names["README.md"] = None  # pyproject names it as the readme
        for rel in sorted(names):
            data = names[rel].read_bytes() if names[rel] is not None else b"flant5_lib\n"
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return f"{top}-{digest}.tar.gz", raw


def _has_dist() -> bool:
    try:
        metadata.version(_DIST_NAME)
        return True
    except metadata.PackageNotFoundError:
        return False


def package_uri(params: Params, archive_name: str) -> str:
    return f"{staging_root(params)}/packages/{archive_name}"


# --- request bodies ---------------------------------------------------------------------------------


def task_args(params: Params, *, project_package: str | None) -> list[str]:
    args = ["--params", params_uri(params), "--nproc-per-node", str(max(1, params.train_accelerator_count)),
            "--nnodes", str(params.train_replica_count)]
    if project_package:
        args += ["--project-package", project_package]
    return args


def training_request(params: Params, *, script_package: str = "<script package uploaded by the SDK>") -> dict[str, Any]:
    """The trainingPipelines.create call (body fields as the SDK sends them)."""
    params = presets.resolve(params)
    archive = build_project_archive()[0] if params.train_job_kind == "script" else None
    project_package = package_uri(params, archive) if archive else None
    args = task_args(params, project_package=project_package)
    m = {"machine_type": params.train_machine_type}
    if params.train_accelerator_type and params.train_accelerator_count:
        m.update(accelerator_type=params.train_accelerator_type, accelerator_count=params.train_accelerator_count)
    if params.train_job_kind == "script":
        runner: dict[str, Any] = {"python_package_spec": {
            "executor_image_uri": images.train_image(params),
            "package_uris": [script_package],
            "python_module": "aiplatform_custom_trainer_script.task",
            "args": args,
        }}
    else:
        # the SDK spells this one in camelCase (python_package_spec stays snake_case): shown as it is sent. No
        # command: the image's ENTRYPOINT (python -m flant5_lib.vertex.task) runs with these args
        runner = {"containerSpec": {"imageUri": images.train_image(params), "args": args}}
    pools = [{**runner, "machine_spec": m, "replica_count": 1,
              "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100}}]
    if params.train_replica_count > 1:
        pools.append({**pools[0], "replica_count": params.train_replica_count - 1})
    inputs: dict[str, Any] = {"worker_pool_specs": pools,
                              "base_output_directory": {"output_uri_prefix": train_output_dir(params)}}
    if params.service_account or params.tensorboard_resource:
        inputs["service_account"] = placeholder(params.service_account, "service_account")
    if params.tensorboard_resource:
        inputs["tensorboard"] = params.tensorboard_resource
    if params.scheduling_strategy != "standard":
        inputs["scheduling"] = {"strategy": params.scheduling_strategy.upper()}
    body: dict[str, Any] = {"displayName": params.train_display_name,
                            "trainingTaskDefinition": CUSTOM_TASK_SCHEMA, "trainingTaskInputs": inputs}
    if params.serving_container_uri:  # set explicitly: job.run registers the model, as the sample does
        body["modelToUpload"] = {"displayName": params.model_display_name, "containerSpec": container_spec(params),
                                 "versionAliases": ["default"]}
    uploads = {"params": params_uri(params)}
    if project_package:
        uploads["project_package"] = project_package
        uploads["requirements"] = images.script_requirements(params)  # type: ignore[assignment]
    return {"method": "POST", "url": f"{api_base(params)}/v1/{parent(params)}/trainingPipelines",
            "uploads_first": uploads, "body": body}


def upload_request(params: Params, artifact_uri: str | None = None) -> dict[str, Any]:
    body = {"model": {"displayName": params.model_display_name, "containerSpec": container_spec(params),
                      "artifactUri": artifact_uri or model_artifact_uri(params), "versionAliases": ["default"]}}
    return {"method": "POST", "url": f"{api_base(params)}/v1/{parent(params)}/models:upload", "body": body}


def deploy_request(params: Params, endpoint: str = "<endpoint id>", model: str = "<model id>") -> dict[str, Any]:
    spec = machine_spec(params.deploy_machine_type, params.deploy_accelerator_type, params.deploy_accelerator_count)
    deployed: dict[str, Any] = {
        "model": model if model.startswith("projects/") else f"{parent(params)}/models/{model}",
        "displayName": params.model_display_name,
        "dedicatedResources": {"machineSpec": spec, "minReplicaCount": params.deploy_min_replicas,
                               "maxReplicaCount": params.deploy_max_replicas},
    }
    if params.deploy_spot:  # Endpoint.deploy(spot=True): DedicatedResources.spot
        deployed["dedicatedResources"]["spot"] = True
    if params.service_account:
        deployed["serviceAccount"] = params.service_account
    ep = endpoint if endpoint.startswith("projects/") else f"{parent(params)}/endpoints/{endpoint}"
    return {
        "create_endpoint": {"method": "POST", "url": f"{api_base(params)}/v1/{parent(params)}/endpoints",
                            "body": {"displayName": params.endpoint_display_name}},
        "method": "POST", "url": f"{api_base(params)}/v1/{ep}:deployModel",
        "body": {"deployedModel": deployed, "trafficSplit": {"0": params.deploy_traffic_percentage}},
        "timeout_s": params.vertex_request_timeout_s,
    }


def predict_request(params: Params, instances: list[dict[str, Any]], endpoint: str = "<endpoint id>") -> dict[str, Any]:
    ep = endpoint if endpoint.startswith("projects/") else f"{parent(params)}/endpoints/{endpoint}"
    return {"method": "POST", "url": f"{api_base(params)}/v1/{ep}:predict", "body": {"instances": instances},
            "timeout_s": params.predict_timeout_s}


def curl_command(request: dict[str, Any]) -> str:
    """The same prediction as a shell command (token from gcloud; the stand-in ignores it)."""
    import json
    import shlex

    return (f"curl -X POST -H \"Authorization: Bearer $(gcloud auth print-access-token)\" "
            f"-H 'Content-Type: application/json' {shlex.quote(request['url'])} -d {shlex.quote(json.dumps(request['body']))}")


def batch_request(params: Params, input_uri: str, output_uri: str, model: str = "<model id>") -> dict[str, Any]:
    spec = machine_spec(params.batch_machine_type, params.batch_accelerator_type, params.batch_accelerator_count)
    body = {
        "displayName": params.batch_display_name,
        "model": model if model.startswith("projects/") else f"{parent(params)}/models/{model}",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [input_uri]}},
        "outputConfig": {"predictionsFormat": "jsonl", "gcsDestination": {"outputUriPrefix": output_uri}},
        "dedicatedResources": {"machineSpec": spec, "startingReplicaCount": params.batch_replica_count,
                               "maxReplicaCount": params.batch_replica_count},
    }
    if params.service_account:
        body["serviceAccount"] = params.service_account
    return {"method": "POST", "url": f"{api_base(params)}/v1/{parent(params)}/batchPredictionJobs", "body": body}


def explain_api_error(err: BaseException, action: str) -> CloudError:
    """One line for an API answer, naming what to check."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    first = " ".join(str(getattr(err, "message", None) or err or type(err).__name__).split())[:400]
    if isinstance(err, auth_exc.GoogleAuthError):
        hint = "no usable credentials: run `gcloud auth application-default login` (or use the local stand-in)"
    elif isinstance(err, (gexc.PermissionDenied, gexc.Unauthenticated, gexc.Forbidden)):
        hint = "check `gcloud auth application-default login`, gcp_project and the roles of service_account"
    elif isinstance(err, gexc.ResourceExhausted):
        hint = "quota exceeded: request more GPU quota for gcp_region, or pick another region/machine (train_preset)"
    elif isinstance(err, gexc.NotFound):
        hint = "check gcp_project, gcp_region and the resource name (it may have been deleted)"
    elif isinstance(err, gexc.InvalidArgument):
        hint = "Vertex refused a field; compare with `--dry-run` output"
    elif isinstance(err, RuntimeError):
        hint = "the job failed; read its logs (Cloud Console, or the local stand-in's workdir)"
    else:
        hint = "check your network, credentials and the Vertex AI status page"
    return CloudError(f"{action}: {type(err).__name__}: {first}; {hint}")
