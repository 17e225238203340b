"""HTTP layer of the Vertex AI stand-in: the REST subset the `flant5 vertex` commands use.

Paths follow the real API (/v1/projects/{p}/locations/{r}/...; operations are also polled under /ui/).
Bodies are REST JSON; errors use Google's JSON error format, so the SDK raises its own exception types.
Every request is recorded (method, path, query, JSON body) for tests: `GET /_local/requests`.
"""

from __future__ import annotations

import copy
import json
import random
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from flant5_lib.vertex.localstack import checks
from flant5_lib.vertex.localstack.backend import ApiError, Backend, now, run_batch_job
from flant5_lib.vertex.localstack.listing import listing as _listing

_P = r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/:]+)"
_ID = r"(?P<rid>[^/:@]+)(?:@(?P<version>[^/:]+))?"
Handler = Callable[[Backend, dict[str, str], dict[str, Any], dict[str, list[str]]], Any]
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _ROUTES.append((method, re.compile(f"^{_P}/{pattern}$"), fn))
        return fn

    return deco


def _get(items: dict[str, dict[str, Any]], rid: str, kind: str, full: str) -> dict[str, Any]:
    if rid not in items:
        raise ApiError(404, f"{kind} {full} is not found.")
    return items[rid]


# --- training pipelines ---------------------------------------------------------------------------


@route("POST", "trainingPipelines")
def create_pipeline(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    for key in ("displayName", "trainingTaskDefinition", "trainingTaskInputs"):
        if not body.get(key):
            raise ApiError(400, f"TrainingPipeline.{key} is required.")
    inputs = body["trainingTaskInputs"]
    checks.worker_pools(inputs.get("worker_pool_specs") or inputs.get("workerPoolSpecs") or [],
                        "training_task_inputs", b.region)
    checks.tensorboard(b.tensorboards, inputs.get("tensorboard"), inputs.get("service_account"),
                       "training_task_inputs")
    pid = b.new_id()
    pipeline = {**copy.deepcopy(body), "name": f"{b.parent()}/trainingPipelines/{pid}",
                "state": "PIPELINE_STATE_PENDING", "createTime": now(), "updateTime": now()}
    with b.lock:
        b.pipelines[pid] = pipeline
    b.start_pipeline(pipeline)
    return copy.deepcopy(pipeline)


@route("GET", "trainingPipelines/(?P<rid>[^/:]+)")
def get_pipeline(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return copy.deepcopy(_get(b.pipelines, m["rid"], "TrainingPipeline", m["rid"]))


@route("GET", "trainingPipelines")
def list_pipelines(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return {"trainingPipelines": _listing(b.pipelines, q)}


@route("POST", "trainingPipelines/(?P<rid>[^/:]+):cancel")
def cancel_pipeline(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    _get(b.pipelines, m["rid"], "TrainingPipeline", m["rid"])
    b.cancel_pipeline(m["rid"])
    return {}


# --- custom jobs (aiplatform.CustomJob, CustomJob.from_local_script) --------------------------------


@route("POST", "customJobs")
def create_custom_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    if not body.get("displayName"):
        raise ApiError(400, "CustomJob.displayName is required.")
    spec = body.get("jobSpec") or {}
    checks.worker_pools(spec.get("workerPoolSpecs") or [], "custom_job.job_spec", b.region)
    checks.tensorboard(b.tensorboards, spec.get("tensorboard"), spec.get("serviceAccount"), "custom_job.job_spec")
    jid = b.new_id()
    job = {**copy.deepcopy(body), "name": f"{b.parent()}/customJobs/{jid}", "state": "JOB_STATE_PENDING",
           "createTime": now(), "updateTime": now()}
    with b.lock:
        b.custom_jobs[jid] = job
    b.start_custom_job(job)
    return copy.deepcopy(job)


@route("GET", "customJobs/(?P<rid>[^/:]+)")
def get_custom_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return copy.deepcopy(_get(b.custom_jobs, m["rid"], "CustomJob", m["rid"]))


@route("GET", "customJobs")
def list_custom_jobs(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return {"customJobs": _listing(b.custom_jobs, q)}


@route("POST", "customJobs/(?P<rid>[^/:]+):cancel")
def cancel_custom_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    _get(b.custom_jobs, m["rid"], "CustomJob", m["rid"])
    b.cancel_pipeline(m["rid"], kind="customjob")
    return {}


@route("DELETE", "customJobs/(?P<rid>[^/:]+)")
def delete_custom_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        job = _get(b.custom_jobs, m["rid"], "CustomJob", m["rid"])
        if job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"):
            raise ApiError(400, f"CustomJob {job['name']} is running; cancel it first.", "FAILED_PRECONDITION")
        del b.custom_jobs[m["rid"]]
    return b.operation(b.parent(), done=True, metadata_type="DeleteOperationMetadata")


# --- TensorBoards (the stand-in knows one: DEFAULT_TENSORBOARD) ---------------------------------------


@route("GET", "tensorboards/(?P<rid>[^/:]+)")
def get_tensorboard(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    name = f"{b.parent()}/tensorboards/{m['rid']}"
    if name not in b.tensorboards:
        raise ApiError(404, f"Tensorboard {name} is not found.")
    return {"name": name, "displayName": m["rid"]}


@route("GET", "tensorboards")
def list_tensorboards(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return {"tensorboards": [{"name": n, "displayName": n.rsplit("/", 1)[1]} for n in sorted(b.tensorboards)]}


# --- models -------------------------------------------------------------------------------------------


@route("POST", "models:upload")
def upload_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    model = body.get("model") or {}
    if not model.get("displayName"):
        raise ApiError(400, "Model.displayName is required.")
    if not (model.get("containerSpec") or {}).get("imageUri"):
        raise ApiError(400, "Model.containerSpec.imageUri is required for a custom-container model.")
    record = b.register_model(model)
    return b.operation(b.parent(), done=True, response={"model": record["name"], "modelVersionId": "1"},
                       response_type="UploadModelResponse", metadata_type="UploadModelOperationMetadata")


@route("GET", f"models/{_ID}")
def get_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return copy.deepcopy(_get(b.models, m["rid"], "Model", m["rid"]))


@route("GET", "models")
def list_models(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return {"models": _listing(b.models, q)}


@route("DELETE", f"models/{_ID}")
def delete_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        model = _get(b.models, m["rid"], "Model", m["rid"])
        users = [e["name"] for e in b.endpoints.values()
                 if any(d["model"].split("@")[0] == model["name"] for d in e.get("deployedModels", []))]
        if users:
            raise ApiError(400, f"Model {model['name']} is deployed to {users[0]}; undeploy it first.", "FAILED_PRECONDITION")
        del b.models[m["rid"]]
    return b.operation(b.parent(), done=True, metadata_type="DeleteOperationMetadata")


# --- endpoints ------------------------------------------------------------------------------------------


@route("POST", "endpoints")
def create_endpoint(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    if not body.get("displayName"):
        raise ApiError(400, "Endpoint.displayName is required.")
    eid = b.new_id()
    endpoint = {**copy.deepcopy(body), "name": f"{b.parent()}/endpoints/{eid}", "deployedModels": [],
                "trafficSplit": {}, "createTime": now(), "updateTime": now()}
    with b.lock:
        b.endpoints[eid] = endpoint
    return b.operation(b.parent(), done=True, response=copy.deepcopy(endpoint), response_type="Endpoint",
                       metadata_type="CreateEndpointOperationMetadata")


@route("GET", "endpoints/(?P<rid>[^/:]+)")
def get_endpoint(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return copy.deepcopy(_get(b.endpoints, m["rid"], "Endpoint", m["rid"]))


@route("GET", "endpoints")
def list_endpoints(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return {"endpoints": _listing(b.endpoints, q)}


@route("DELETE", "endpoints/(?P<rid>[^/:]+)")
def delete_endpoint(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
        if endpoint.get("deployedModels"):
            raise ApiError(400, f"Endpoint {endpoint['name']} has deployed models; undeploy them first.",
                           "FAILED_PRECONDITION")
        del b.endpoints[m["rid"]]
    return b.operation(b.parent(), done=True, metadata_type="DeleteOperationMetadata")


@route("POST", "endpoints/(?P<rid>[^/:]+):deployModel")
def deploy_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
    deployed = copy.deepcopy(body.get("deployedModel") or {})
    model_name = deployed.get("model", "")
    mid = model_name.rsplit("/", 1)[-1].split("@")[0]
    model = _get(b.models, mid, "Model", model_name)
    if "dedicatedResources" not in deployed:
        raise ApiError(400, "Model does not support automatic resources; DeployedModel.dedicatedResources is required.")
    checks.machine_spec(deployed["dedicatedResources"].get("machineSpec"), "deployed_model.dedicated_resources",
                        b.region)
    dmid = b.new_id()
    deployed.update(id=dmid, model=model["name"], modelVersionId=model.get("versionId", "1"), createTime=now())
    split = dict(body.get("trafficSplit") or {"0": 100})
    op = b.operation(b.parent(), done=False, metadata_type="DeployModelOperationMetadata")

    def work() -> None:
        dep = None
        try:
            dep = b.start_server(model, dmid, m["rid"])
            b.wait_healthy(dep)
            with b.lock:
                b.deployments[dmid] = dep
                endpoint["deployedModels"].append(deployed)
                new = {(dmid if k == "0" else k): int(v) for k, v in split.items()}
                endpoint["trafficSplit"] = {k: v for k, v in new.items() if k == dmid or k in b.deployments}
                endpoint["updateTime"] = now()
            b.finish_operation(op, response={"deployedModel": deployed}, response_type="DeployModelResponse")
        except ApiError as err:
            b.finish_operation(op, error=err)
        except Exception as err:  # never leave the SDK polling forever
            if dep is not None:
                dep.process.kill()
            b.finish_operation(op, error=ApiError(500, f"local stand-in error: {type(err).__name__}: {err}"))

    worker = threading.Thread(target=work, daemon=True, name=f"deploy-{dmid}")
    worker.start()
    # answer with a finished operation when the server comes up quickly: the SDK's LRO polling backs off to
    # ~20 s between polls; a slow start still returns a pending operation that the SDK polls under /ui/
    worker.join(timeout=b.sync_wait_s)
    with b.lock:
        return copy.deepcopy(op)


@route("POST", "endpoints/(?P<rid>[^/:]+):undeployModel")
def undeploy_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    dmid = str(body.get("deployedModelId", ""))
    with b.lock:
        endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
        if not any(d["id"] == dmid for d in endpoint["deployedModels"]):
            raise ApiError(404, f"DeployedModel {dmid} is not found on Endpoint {endpoint['name']}.")
        endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != dmid]
        split = body.get("trafficSplit") or {k: v for k, v in endpoint["trafficSplit"].items() if k != dmid}
        endpoint["trafficSplit"] = {k: int(v) for k, v in split.items() if k != dmid}
        endpoint["updateTime"] = now()
    b.stop_deployment(dmid)
    return b.operation(b.parent(), done=True, response={}, response_type="UndeployModelResponse",
                       metadata_type="UndeployModelOperationMetadata")


@route("POST", "endpoints/(?P<rid>[^/:]+):predict")
def predict(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
        split = {k: v for k, v in endpoint.get("trafficSplit", {}).items() if v > 0 and k in b.deployments}
        if not split:
            raise ApiError(400, f"Endpoint {endpoint['name']} has no deployed model serving traffic.", "FAILED_PRECONDITION")
        dmid = random.choices(list(split), weights=list(split.values()))[0]
        dep = b.deployments[dmid]
        deployed = next(d for d in endpoint["deployedModels"] if d["id"] == dmid)
    if not isinstance(body.get("instances"), list):
        raise ApiError(400, "instances: a list is required.")
    answer = b.forward_predict(dep, body)
    model = b.models.get(deployed["model"].rsplit("/", 1)[-1], {})
    return {"predictions": answer.get("predictions", []), "deployedModelId": dmid, "model": deployed["model"],
            "modelDisplayName": model.get("displayName", ""), "modelVersionId": deployed.get("modelVersionId", "1")}


# --- batch prediction and operations ------------------------------------------------------------------


@route("POST", "batchPredictionJobs")
def create_batch(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    for key in ("displayName", "model", "inputConfig", "outputConfig"):
        if not body.get(key):
            raise ApiError(400, f"BatchPredictionJob.{key} is required.")
    mid = body["model"].rsplit("/", 1)[-1].split("@")[0]
    _get(b.models, mid, "Model", body["model"])
    if not body.get("dedicatedResources"):
        raise ApiError(400, "BatchPredictionJob.dedicatedResources is required for a custom-trained model.")
    checks.machine_spec(body["dedicatedResources"].get("machineSpec"), "batch_prediction_job.dedicated_resources",
                        b.region)
    jid = b.new_id()
    job = {**copy.deepcopy(body), "name": f"{b.parent()}/batchPredictionJobs/{jid}", "state": "JOB_STATE_PENDING",
           "createTime": now(), "updateTime": now()}
    with b.lock:
        b.batch_jobs[jid] = job
    threading.Thread(target=run_batch_job, args=(b, job), daemon=True, name=f"batch-{jid}").start()
    return copy.deepcopy(job)


@route("GET", "batchPredictionJobs/(?P<rid>[^/:]+)")
def get_batch(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return copy.deepcopy(_get(b.batch_jobs, m["rid"], "BatchPredictionJob", m["rid"]))


@route("GET", "batchPredictionJobs")
def list_batch(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return {"batchPredictionJobs": _listing(b.batch_jobs, q)}


@route("POST", "batchPredictionJobs/(?P<rid>[^/:]+):cancel")
def cancel_batch(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        job = _get(b.batch_jobs, m["rid"], "BatchPredictionJob", m["rid"])
        if job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
            job.update(state="JOB_STATE_CANCELLING", updateTime=now())
    return {}


@route("DELETE", "batchPredictionJobs/(?P<rid>[^/:]+)")
def delete_batch(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        job = _get(b.batch_jobs, m["rid"], "BatchPredictionJob", m["rid"])
        if job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"):
            raise ApiError(400, f"BatchPredictionJob {job['name']} is running; cancel it first.", "FAILED_PRECONDITION")
        del b.batch_jobs[m["rid"]]
    return b.operation(b.parent(), done=True, metadata_type="DeleteOperationMetadata")


@route("GET", r"(?:[^:]+/)?operations/(?P<rid>[^/:]+)")
def get_operation(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        for name, op in b.operations.items():
            if name.endswith(f"/operations/{m['rid']}"):
                return copy.deepcopy(op)
    raise ApiError(404, f"Operation {m['rid']} is not found.")


# --- the app ---------------------------------------------------------------------------------------------


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="flant5 Vertex AI stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/_local/requests")
    def recorded() -> list[dict[str, Any]]:
        with backend.lock:
            return copy.deepcopy(backend.requests)

    @app.get("/_local/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE", "PATCH", "PUT"])
    async def dispatch(path: str, request: Request) -> Response:
        raw = await request.body()  # handlers block (subprocesses, forwarding), so they run in the thread pool
        if request.method == "POST" and path.endswith(":rawPredict"):
            ctype = request.headers.get("content-type", "application/json")
            return await run_in_threadpool(_raw_predict, backend, path, raw, ctype)
        return await run_in_threadpool(_handle, backend, request.method, path, request.url.query, raw)

    return app


def _handle(backend: Backend, method: str, path: str, query: str, raw: bytes) -> JSONResponse:
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        body = {"_unparsed": raw[:2000].decode("utf-8", "replace")}
    q = parse_qs(query)
    with backend.lock:
        backend.requests.append({"time": now(), "method": method, "path": "/" + path,
                                 "query": {k: v[0] if len(v) == 1 else v for k, v in q.items()}, "body": body})
    rest = re.sub(r"^(v1|v1beta1|ui)/", "", path)
    try:
        for verb, pattern, fn in _ROUTES:
            match = pattern.match(rest)
            if verb == method and match:
                groups = {k: v for k, v in match.groupdict().items() if v is not None}
                _check_parent(backend, groups)
                return JSONResponse(fn(backend, groups, body if isinstance(body, dict) else {}, q))
        raise ApiError(404, f"{method} /{path} is not part of the local Vertex AI stand-in.")
    except ApiError as err:
        return JSONResponse(err.body(), status_code=err.code)


def _check_parent(backend: Backend, groups: dict[str, str]) -> None:
    """The project and region in the path must be the ones this stand-in serves (`local-stack --project --region`):
    a regional Vertex endpoint refuses another region's resources the same way."""
    if groups["project"] != backend.project:
        raise ApiError(403, f"Permission denied on project {groups['project']!r} (the stand-in serves "
                            f"{backend.project!r}).", "PERMISSION_DENIED")
    if groups["region"] != backend.region:
        raise ApiError(400, f"Location {groups['region']!r} does not match this endpoint's region "
                            f"{backend.region!r}; use gcp_region: {backend.region}.")


def _raw_predict(backend: Backend, path: str, raw: bytes, content_type: str) -> Response:
    """:rawPredict: the body reaches the container unchanged and its answer (status included) comes back."""
    rest = re.sub(r"^(v1|v1beta1|ui)/", "", path)
    with backend.lock:
        backend.requests.append({"time": now(), "method": "POST", "path": "/" + path, "query": {},
                                 "body": {"_raw": raw[:2000].decode("utf-8", "replace")}})
    try:
        m = re.match(f"^{_P}/endpoints/(?P<rid>[^/:]+):rawPredict$", rest)
        if not m:
            raise ApiError(404, f"POST /{path} is not part of the local Vertex AI stand-in.")
        _check_parent(backend, m.groupdict())
        with backend.lock:
            endpoint = _get(backend.endpoints, m["rid"], "Endpoint", m["rid"])
            split = {k: v for k, v in endpoint.get("trafficSplit", {}).items() if v > 0 and k in backend.deployments}
            if not split:
                raise ApiError(400, f"Endpoint {endpoint['name']} has no deployed model serving traffic.",
                               "FAILED_PRECONDITION")
            dmid = random.choices(list(split), weights=list(split.values()))[0]
            dep = backend.deployments[dmid]
        r = backend.forward_raw(dep, raw, content_type)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
    except ApiError as err:
        return JSONResponse(err.body(), status_code=err.code)
