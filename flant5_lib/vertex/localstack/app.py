"""HTTP layer of the Vertex AI stand-in: the REST subset the `flant5 vertex` commands use.

Paths follow the real API (/v1/projects/{p}/locations/{r}/...; operations are also polled under /ui/).
Bodies are REST JSON; errors use Google's JSON error format, so the SDK raises its own exception types.
Every request is recorded (method, path, query, JSON body) for tests: `GET /_local/requests`. Creating and acting
on a resource (deploy, predict) has its own handler; get, list, cancel and delete are one handler per verb over
`KINDS`, a table of resource kinds.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from flant5_lib.vertex.localstack import checks, evaluations, pipeline_jobs, tensorboards, traffic, tuning, versions
from flant5_lib.vertex.localstack.backend import Backend, Deployment, now, run_batch_job
from flant5_lib.vertex.localstack.errors import ApiError
from flant5_lib.vertex.localstack.listing import listing as _listing

_P = r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/:]+)"
_RID = r"(?P<rid>[^/:]+)"
_ID = r"(?P<rid>[^/:@]+)(?:@(?P<version>[^/:]+))?"  # a model id, optionally @version
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


def _start_training(b: Backend, body: dict[str, Any], spec: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    """A training pipeline or a custom job: refused as Vertex refuses it, else recorded PENDING and started."""
    checks.worker_pools(spec.get("worker_pool_specs") or spec.get("workerPoolSpecs") or [], where, b.region)
    checks.tensorboard(b.tensorboards, spec.get("tensorboard"),
                       spec.get("service_account") or spec.get("serviceAccount"), where)
    checks.scheduling(spec, where, b.region)
    rid = b.new_id()
    collection, table, state = (("trainingPipelines", b.pipelines, "PIPELINE_STATE_PENDING") if kind == "pipeline"
                                else ("customJobs", b.custom_jobs, "JOB_STATE_PENDING"))
    resource = {**copy.deepcopy(body), "name": f"{b.parent()}/{collection}/{rid}", "state": state,
                "createTime": now(), "updateTime": now()}
    with b.lock:
        table[rid] = resource
    b.start_training(resource, kind)
    return copy.deepcopy(resource)


# --- training pipelines (create here; get, list, cancel, delete of every kind: the table of kinds below) ------


@route("POST", "trainingPipelines")
def create_pipeline(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    for key in ("displayName", "trainingTaskDefinition", "trainingTaskInputs"):
        if not body.get(key):
            raise ApiError(400, f"TrainingPipeline.{key} is required.")
    return _start_training(b, body, body["trainingTaskInputs"], "training_task_inputs", "pipeline")


# --- custom jobs (aiplatform.CustomJob, CustomJob.from_local_script) --------------------------------


@route("POST", "customJobs")
def create_custom_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    if not body.get("displayName"):
        raise ApiError(400, "CustomJob.displayName is required.")
    return _start_training(b, body, body.get("jobSpec") or {}, "custom_job.job_spec", "customjob")


# --- hyperparameter tuning jobs (aiplatform.HyperparameterTuningJob; the trials are custom jobs: `tuning`) ---------


@route("POST", "hyperparameterTuningJobs")
def create_tuning_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return tuning.create(b, body)


# --- pipeline jobs (aiplatform.PipelineJob: run by kfp's local orchestrator, `pipeline_jobs`) ----------------


@route("POST", "pipelineJobs")
def create_pipeline_job(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return pipeline_jobs.create(b, body, q)


# --- TensorBoards (the stand-in knows one: DEFAULT_TENSORBOARD) ---------------------------------------


@route("POST", "tensorboards")
def create_tensorboard(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return tensorboards.create(b, body)


@route("GET", "tensorboards/(?P<rid>[^/:]+)")
def get_tensorboard(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return tensorboards.get(b, m["rid"])


@route("GET", "tensorboards")
def list_tensorboards(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return tensorboards.list_(b)


# --- models -------------------------------------------------------------------------------------------


@route("POST", "models:upload")
def upload_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    model = body.get("model") or {}
    if not model.get("displayName"):
        raise ApiError(400, "Model.displayName is required.")
    if not (model.get("containerSpec") or {}).get("imageUri"):
        raise ApiError(400, "Model.containerSpec.imageUri is required for a custom-container model.")
    if body.get("parentModel"):  # a new version of an existing model (`versions`)
        with b.lock:
            record = versions.upload_version(b, body["parentModel"], model)
    else:
        record = b.register_model(model)
    return b.operation(b.parent(), done=True, response={"model": record["name"], "modelVersionId": record["versionId"]},
                       response_type="UploadModelResponse", metadata_type="UploadModelOperationMetadata")


@route("GET", "models/(?P<rid>[^/:@]+):listVersions")
def list_model_versions(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return versions.list_versions(b, m["rid"], m["rid"])


@route("POST", f"models/{_ID}:mergeVersionAliases")
def merge_version_aliases(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return versions.merge_aliases(b, m["rid"], m.get("version"), m["rid"], list(body.get("versionAliases") or []))


@route("DELETE", "models/(?P<rid>[^/:@]+)@(?P<version>[^/:]+):deleteVersion")
def delete_model_version(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        versions.delete_version(b, m["rid"], m["version"], f"{m['rid']}@{m['version']}")
    return b.operation(b.parent(), done=True, metadata_type="DeleteOperationMetadata")


@route("POST", f"models/{_ID}/evaluations:import")
def import_model_evaluation(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return evaluations.import_evaluation(b, m["rid"], m.get("version"), m["rid"], body)


@route("GET", f"models/{_ID}/evaluations")
def list_model_evaluations(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return evaluations.list_evaluations(b, m["rid"], m.get("version"), m["rid"])


@route("GET", f"models/{_ID}/evaluations/(?P<eid>[^/:]+)")
def get_model_evaluation(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        return evaluations.get_evaluation(b, m["rid"], m["eid"], f"{m['rid']}/evaluations/{m['eid']}")


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


@route("POST", "endpoints/(?P<rid>[^/:]+):deployModel")
def deploy_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
    with b.lock:  # the split first: a bad one is refused before the model is looked at
        split = traffic.check_split(body.get("trafficSplit") or {"0": 100},
                                    [d["id"] for d in endpoint["deployedModels"]], endpoint["name"], new=True)
    deployed = copy.deepcopy(body.get("deployedModel") or {})
    model_name = deployed.get("model", "")
    mid = model_name.rsplit("/", 1)[-1].split("@")[0]
    model = _get(b.models, mid, "Model", model_name)
    if "dedicatedResources" not in deployed:
        raise ApiError(400, "Model does not support automatic resources; DeployedModel.dedicatedResources is required.")
    checks.machine_spec(deployed["dedicatedResources"].get("machineSpec"), "deployed_model.dedicated_resources",
                        b.region)
    dmid = b.new_id()
    if mid in b.models and model_name.split("@", 1)[1:]:  # models/ID@VERSION deploys that version
        model = versions.resolve(b, mid, model_name.split("@", 1)[1], model_name)
    deployed.update(id=dmid, model=model["name"], modelVersionId=model.get("versionId", "1"), createTime=now())
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


@route("PATCH", "endpoints/(?P<rid>[^/:]+)")
def update_endpoint(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    """Endpoint.update(traffic_split=...): the fields in updateMask (traffic_split, display_name, ...)."""
    mask = {f.strip() for f in ",".join(q.get("updateMask", [])).split(",") if f.strip()}
    with b.lock:
        endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
        if "traffic_split" in mask or "trafficSplit" in mask:
            endpoint["trafficSplit"] = traffic.check_split(body.get("trafficSplit") or {},
                                                           [d["id"] for d in endpoint["deployedModels"]],
                                                           endpoint["name"])
        for rest_name, mask_name in (("displayName", "display_name"), ("description", "description"),
                                     ("labels", "labels")):
            if rest_name in body and ({rest_name, mask_name} & mask):
                endpoint[rest_name] = copy.deepcopy(body[rest_name])
        endpoint["updateTime"] = now()
        return copy.deepcopy(endpoint)


@route("POST", "endpoints/(?P<rid>[^/:]+):undeployModel")
def undeploy_model(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    dmid = str(body.get("deployedModelId", ""))
    with b.lock:
        endpoint = _get(b.endpoints, m["rid"], "Endpoint", m["rid"])
        if not any(d["id"] == dmid for d in endpoint["deployedModels"]):
            raise ApiError(404, f"DeployedModel {dmid} is not found on Endpoint {endpoint['name']}.")
        endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != dmid]
        rest = [d["id"] for d in endpoint["deployedModels"]]
        if body.get("trafficSplit"):
            endpoint["trafficSplit"] = traffic.check_split(body["trafficSplit"], rest, endpoint["name"])
        else:
            left = {k: v for k, v in endpoint["trafficSplit"].items() if k != dmid}
            if sum(left.values()) not in (0, 100):
                raise ApiError(400, f"Undeploying DeployedModel {dmid} leaves the traffic split summing to "
                                    f"{sum(left.values())}; send a trafficSplit for the models that stay.")
            endpoint["trafficSplit"] = left
        endpoint["updateTime"] = now()
    b.stop_deployment(dmid)
    return b.operation(b.parent(), done=True, response={}, response_type="UndeployModelResponse",
                       metadata_type="UndeployModelOperationMetadata")


def _pick_deployment(b: Backend, rid: str) -> tuple[dict[str, Any], str, Deployment]:
    """(endpoint, deployed model id, its server) for one prediction, drawn by the endpoint's traffic split."""
    with b.lock:
        endpoint = _get(b.endpoints, rid, "Endpoint", rid)
        split = {k: v for k, v in endpoint.get("trafficSplit", {}).items() if v > 0 and k in b.deployments}
        if not split:
            raise ApiError(400, f"Endpoint {endpoint['name']} has no deployed model serving traffic.", "FAILED_PRECONDITION")
        count = b.predictions_served.get(rid, 0)
        b.predictions_served[rid] = count + 1
        dmid = traffic.pick(split, count)
        return endpoint, dmid, b.deployments[dmid]


@route("POST", "endpoints/(?P<rid>[^/:]+):predict")
def predict(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    endpoint, dmid, dep = _pick_deployment(b, m["rid"])
    with b.lock:
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


@route("GET", r"(?:[^:]+/)?operations/(?P<rid>[^/:]+)")
def get_operation(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    with b.lock:
        for name, op in b.operations.items():
            if name.endswith(f"/operations/{m['rid']}"):
                return copy.deepcopy(op)
    raise ApiError(404, f"Operation {m['rid']} is not found.")


# --- get, list, cancel and delete: one handler per verb over a table of resource kinds -------------------------
_RUNNING = ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING")


def _cancel_batch(b: Backend, rid: str) -> None:
    """The batch worker sees CANCELLING between chunks and ends the job CANCELLED."""
    with b.lock:
        job = b.batch_jobs[rid]
        if job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
            job.update(state="JOB_STATE_CANCELLING", updateTime=now())


def _job_in_use(b: Backend, job: dict[str, Any]) -> str | None:
    return "is running; cancel it first." if job["state"] in _RUNNING else None


def _model_in_use(b: Backend, model: dict[str, Any]) -> str | None:
    users = [e["name"] for e in b.endpoints.values()
             if any(d["model"].split("@")[0] == model["name"] for d in e.get("deployedModels", []))]
    return f"is deployed to {users[0]}; undeploy it first." if users else None


def _endpoint_in_use(b: Backend, endpoint: dict[str, Any]) -> str | None:
    return "has deployed models; undeploy them first." if endpoint.get("deployedModels") else None


@dataclass(frozen=True)
class Kind:
    """One kind of resource, as a row: a later kind (tuning jobs, pipeline jobs) plugs in as one more."""

    collection: str  # the REST collection: /v1/{parent}/<collection>/<id>
    name: str  # the resource type, as Vertex names it in messages
    table: str  # the Backend attribute holding them by id
    rid: str = _RID  # the id in the path
    cancel: Callable[[Backend, str], None] | None = None  # :cancel, when the kind has one
    in_use: Callable[[Backend, dict[str, Any]], str | None] | None = None  # DELETE, refused while this says why


KINDS = (
    Kind("trainingPipelines", "TrainingPipeline", "pipelines", cancel=lambda b, rid: b.cancel_pipeline(rid)),
    Kind("customJobs", "CustomJob", "custom_jobs", cancel=lambda b, rid: b.cancel_pipeline(rid, kind="customjob"),
         in_use=_job_in_use),
    Kind("models", "Model", "models", rid=_ID, in_use=_model_in_use),
    Kind("endpoints", "Endpoint", "endpoints", in_use=_endpoint_in_use),
    Kind("batchPredictionJobs", "BatchPredictionJob", "batch_jobs", cancel=_cancel_batch, in_use=_job_in_use),
    Kind("hyperparameterTuningJobs", "HyperparameterTuningJob", "tuning_jobs", cancel=tuning.cancel,
         in_use=_job_in_use),
    Kind("pipelineJobs", "PipelineJob", "pipeline_jobs", cancel=pipeline_jobs.cancel, in_use=pipeline_jobs.in_use),
)


def _get_handler(kind: Kind) -> Handler:
    def get(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
        with b.lock:
            if m.get("version"):  # models/{id}@{version or alias}
                return copy.deepcopy(versions.resolve(b, m["rid"], m["version"], f"{m['rid']}@{m['version']}"))
            return copy.deepcopy(_get(getattr(b, kind.table), m["rid"], kind.name, m["rid"]))

    return get


def _list_handler(kind: Kind) -> Handler:
    def list_(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
        with b.lock:
            return {kind.collection: _listing(getattr(b, kind.table), q)}

    return list_


def _cancel_handler(kind: Kind, cancel: Callable[[Backend, str], None]) -> Handler:
    def cancel_(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
        with b.lock:
            _get(getattr(b, kind.table), m["rid"], kind.name, m["rid"])
        cancel(b, m["rid"])
        return {}

    return cancel_


def _delete_handler(kind: Kind, in_use: Callable[[Backend, dict[str, Any]], str | None]) -> Handler:
    def delete(b: Backend, m: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
        with b.lock:
            items = getattr(b, kind.table)
            resource = _get(items, m["rid"], kind.name, m["rid"])
            why = in_use(b, resource)
            if why:
                raise ApiError(400, f"{kind.name} {resource['name']} {why}", "FAILED_PRECONDITION")
            del items[m["rid"]]
        return b.operation(b.parent(), done=True, metadata_type="DeleteOperationMetadata")

    return delete


for _kind in KINDS:
    route("GET", f"{_kind.collection}/{_kind.rid}")(_get_handler(_kind))
    route("GET", _kind.collection)(_list_handler(_kind))
    if _kind.cancel:
        route("POST", f"{_kind.collection}/{_RID}:cancel")(_cancel_handler(_kind, _kind.cancel))
    if _kind.in_use:
        route("DELETE", f"{_kind.collection}/{_kind.rid}")(_delete_handler(_kind, _kind.in_use))


# --- the app ---------------------------------------------------------------------------------------------


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="flant5 Vertex AI stand-in", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/_local/requests")
    def recorded() -> list[dict[str, Any]]:
        with backend.lock:
            return copy.deepcopy(backend.requests)

    @app.get("/_local/restarts")
    def restarts() -> dict[str, list[dict[str, Any]]]:
        with backend.lock:  # Spot preemptions and restarts per job (localstack.preempt)
            return copy.deepcopy(backend.restarts)

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
        _, _, dep = _pick_deployment(backend, m["rid"])
        r = backend.forward_raw(dep, raw, content_type)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
    except ApiError as err:
        return JSONResponse(err.body(), status_code=err.code)
