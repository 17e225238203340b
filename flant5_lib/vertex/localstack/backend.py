"""The stand-in's state and the real work behind it: training subprocesses, prediction servers, batch jobs.

Resources are kept as the REST JSON Vertex returns (camelCase), so the HTTP layer only looks them up.
A training pipeline runs the job's own command with the current interpreter and the AIP_* variables
Vertex gives a container; a deployment starts `python -m flant5_lib serve` with the serving AIP_*
variables. Logs go to <workdir>/jobs/<kind>-<id>.log (a job's chief; its other replicas to
<workdir>/jobs/<kind>-<id>/workerpool<P>-<I>.log, `replicas`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flant5_lib import storage
from flant5_lib.procs import free_port, stop_process
from flant5_lib.vertex.localstack import checks, replicas
from flant5_lib.vertex.localstack.errors import ApiError

log = logging.getLogger(__name__)

TYPE_PREFIX = "type.googleapis.com/google.cloud.aiplatform.v1."
LOCAL_ENV = "FLANT5_VERTEX_LOCAL"  # marks a stand-in job (replicas still run as Vertex runs them: `replicas`)
_DEPLOY_TIMEOUT_S = 300.0


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass
class Deployment:
    """One running prediction server behind a deployed model."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    predict_route: str
    health_route: str


@dataclass
class Backend:
    """Everything the stand-in knows; all access goes through `lock`."""

    workdir: Path
    gcs_url: str
    project: str
    region: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensorboards: set[str] = field(default_factory=set)  # full resource names that exist
    tensorboard_records: dict[str, dict[str, Any]] = field(default_factory=dict)  # created ones (`tensorboards`)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_versions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # id -> versionId -> (`versions`)
    model_evaluations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # id -> eid -> (`evaluations`)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions_served: dict[str, int] = field(default_factory=dict)  # endpoint id -> count (`traffic.pick`)
    batch_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # hyperparameterTuningJobs (`tuning`)
    pipeline_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # pipelineJobs (`pipeline_jobs`)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, Deployment] = field(default_factory=dict)  # deployed model id -> server
    processes: dict[str, Any] = field(default_factory=dict)  # job id -> its replicas (`replicas.Group`) or worker
    requests: list[dict[str, Any]] = field(default_factory=list)
    preempt: Any = None  # localstack.preempt.PreemptPlan: Spot replicas are preempted and restarted (None: never)
    restarts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # job resource name -> preemptions
    deploy_timeout_s: float = _DEPLOY_TIMEOUT_S
    sync_wait_s: float = 30.0  # how long a deploy request waits before answering with a pending operation
    _counter: int = 1000

    # --- ids, names and operations --------------------------------------------------------------

    def new_id(self) -> str:
        with self.lock:
            self._counter += 1
            return str(self._counter)

    def parent(self, project: str | None = None, region: str | None = None) -> str:
        return f"projects/{project or self.project}/locations/{region or self.region}"

    def operation(self, parent: str, *, done: bool, response: dict[str, Any] | None = None,
                  response_type: str | None = None, metadata_type: str = "GenericOperationMetadata") -> dict[str, Any]:
        op: dict[str, Any] = {"name": f"{parent}/operations/{self.new_id()}", "done": done,
                              "metadata": {"@type": TYPE_PREFIX + metadata_type,
                                           **({"genericMetadata": {"createTime": now(), "updateTime": now()}}
                                              if metadata_type != "GenericOperationMetadata"
                                              else {"createTime": now(), "updateTime": now()})}}
        if done:
            self.finish_operation(op, response=response, response_type=response_type)
        with self.lock:
            self.operations[op["name"]] = op
        return op

    def finish_operation(self, op: dict[str, Any], *, response: dict[str, Any] | None = None,
                         response_type: str | None = None, error: ApiError | None = None) -> None:
        with self.lock:
            if error is not None:
                op["error"] = error.rpc_status()
            elif response_type:
                op["response"] = {"@type": TYPE_PREFIX + response_type, **(response or {})}
            else:
                op["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
            op["done"] = True

    def log_path(self, kind: str, rid: str) -> Path:
        path = self.workdir / "jobs" / f"{kind}-{rid}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # --- training ---------------------------------------------------------------------------------

    def start_training(self, resource: dict[str, Any], kind: str) -> None:
        """Run a TrainingPipeline (kind 'pipeline') or a CustomJob ('customjob') in the background."""
        threading.Thread(target=self._run_training, args=(resource, kind), daemon=True,
                         name=f"{kind}-{resource['name']}").start()

    def _command(self, pool: dict[str, Any], job_dir: Path) -> tuple[list[str], str]:
        """The command the container would run, with this interpreter in place of the image's python."""
        if "python_package_spec" in pool or "pythonPackageSpec" in pool:
            spec = pool.get("python_package_spec") or pool.get("pythonPackageSpec")
            src = self._unpack(spec.get("package_uris") or spec.get("packageUris") or [], job_dir)
            module = spec.get("python_module") or spec.get("pythonModule")
            checks.script_image(spec.get("executor_image_uri") or spec.get("executorImageUri") or "", src)
            return [sys.executable, "-m", module, *(spec.get("args") or [])], self._roots(src)
        spec = pool.get("containerSpec") or pool.get("container_spec") or {}
        command, package = checks.container_command(spec)  # `command`, or the project image's ENTRYPOINT/CMD
        if Path(command[0]).name.startswith("python"):
            command[0] = sys.executable
        if package:  # CustomJob.from_local_script on a project image: its package on the path, not pip-installed
            return command, self._roots(self._unpack([package], job_dir))
        return command, ""

    def _unpack(self, uris: list[str], job_dir: Path) -> Path:
        """Download and unpack a job's source archives (their requirements are checked, never pip-installed here:
        this environment stands for the image)."""
        src = job_dir / "package"
        for i, uri in enumerate(uris):
            archive = storage.download_file(uri, job_dir / f"package-{i}.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(src, filter="data")
        log.info("job package unpacked in %s", src)
        return src

    @staticmethod
    def _roots(src: Path) -> str:
        """The SDK's archive holds <name>-<version>/<module dir>/: every top folder goes on the path."""
        return os.pathsep.join(str(p) for p in sorted(src.iterdir()) if p.is_dir()) if src.exists() else ""

    def _run_training(self, pipeline: dict[str, Any], kind: str) -> None:
        """Run a TrainingPipeline (kind 'pipeline') or a CustomJob ('customjob') to its end state."""
        pid = pipeline["name"].rsplit("/", 1)[1]
        if kind == "pipeline":
            inputs = pipeline.get("trainingTaskInputs", {})
            pools = inputs.get("worker_pool_specs") or inputs.get("workerPoolSpecs") or []
            base = (inputs.get("base_output_directory") or inputs.get("baseOutputDirectory") or {})
            states = "PIPELINE_STATE_"
        else:
            inputs = pipeline.get("jobSpec", {})
            pools = inputs.get("workerPoolSpecs") or []
            base = inputs.get("baseOutputDirectory") or {}
            states = "JOB_STATE_"
        base_uri = (base.get("output_uri_prefix") or base.get("outputUriPrefix") or "").rstrip("/")
        job_dir = self.workdir / "jobs" / f"{kind}-{pid}"
        job_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(kind, pid)
        self._set_pipeline(pipeline, states + "RUNNING", startTime=now())
        try:
            if not pools:
                raise ApiError(400, "trainingTaskInputs.worker_pool_specs is empty")
            if not base_uri:
                raise ApiError(400, "base_output_directory.output_uri_prefix is required by the local stand-in")
            failed = self._run_replicas(pid, pipeline, states, inputs, pools, base_uri, job_dir, log_path)
            if pipeline.get("state") == states + "CANCELLING":
                self._set_pipeline(pipeline, states + "CANCELLED", endTime=now())
                return
            if failed is not None:
                name, code, path = failed
                raise ApiError(500, f"The replica {name} exited with a non-zero status of {code}. "
                                    f"Last log lines: {replicas.log_summary(path)} (full log: {path})", "INTERNAL")
            upload = pipeline.get("modelToUpload")
            if upload:
                model_uri = f"{base_uri}/model"
                if not storage.list_blobs(model_uri):
                    raise ApiError(500, f"the job finished but wrote no model to AIP_MODEL_DIR={model_uri}/")
                model = self.register_model({**upload, "artifactUri": model_uri}, training_pipeline=pipeline["name"])
                pipeline["modelToUpload"] = model
            self._set_pipeline(pipeline, states + "SUCCEEDED", endTime=now())
        except ApiError as err:
            with self.lock:
                pipeline["error"] = err.rpc_status()
            self._set_pipeline(pipeline, states + "FAILED", endTime=now())
        except Exception as err:  # a stand-in bug must still end the job, never leave the SDK polling forever
            log.exception("%s %s crashed", kind, pid)
            with self.lock:
                pipeline["error"] = ApiError(500, f"local stand-in error: {type(err).__name__}: {err}").rpc_status()
            self._set_pipeline(pipeline, states + "FAILED", endTime=now())

    def _run_replicas(self, pid: str, pipeline: dict[str, Any], states: str, inputs: dict[str, Any],
                      pools: list[dict[str, Any]], base_uri: str, job_dir: Path,
                      log_path: Path) -> tuple[str, int, Path] | None:
        """Every replica of every pool as its own process (`replicas`), to the end; returns the first that failed.

        The chief logs to <kind>-<id>.log as a one-replica job always did, every other replica to
        <kind>-<id>/workerpool<P>-<I>.log; a Spot job's chief is preempted and restarted as `self.preempt` says."""
        from flant5_lib.vertex import images
        from flant5_lib.vertex.localstack import preempt

        def restarted(row: dict[str, Any]) -> None:
            with self.lock:
                self.restarts.setdefault(pipeline["name"], []).append(row)

        cluster = replicas.cluster_addresses(pools)
        group = replicas.Group()
        with self.lock:
            self.processes[pid] = group  # cancel and shutdown stop every replica
        runs: list[replicas.Replica] = []
        commands: dict[str, tuple[list[str], str]] = {}
        for p, pool in enumerate(pools):
            if f"workerpool{p}" not in cluster:
                if p == replicas.REDUCTION_SERVER_POOL and replicas.replica_count(pool):
                    log.info("pipeline %s: reduction-server pool not run by the stand-in (no NCCL here)", pid)
                continue
            key = json.dumps({k: v for k, v in pool.items() if k not in ("replica_count", "replicaCount")},
                             sort_keys=True)
            if key not in commands:
                commands[key] = self._command(pool, job_dir)
            cmd, pythonpath = commands[key]
            env = self._job_env(pool, base_uri, inputs)
            if pythonpath:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
            spec = (pool.get("python_package_spec") or pool.get("pythonPackageSpec") or {})
            uri = (spec.get("executor_image_uri") or spec.get("executorImageUri")
                   or (pool.get("containerSpec") or pool.get("container_spec") or {}).get("imageUri") or "")
            info = images.describe(uri) if uri else None
            pytorch = bool(info and info.source == "prebuilt" and info.torch)
            for i in range(replicas.replica_count(pool)):
                name = replicas.name(p, i)
                cwd = job_dir if name == "workerpool0-0" else job_dir / name  # each replica its own "VM disk"
                cwd.mkdir(parents=True, exist_ok=True)
                runs.append(replicas.Replica(p, i, cmd, replicas.replica_env(env, cluster, p, i, pytorch_image=pytorch),
                                             cwd, log_path if name == "workerpool0-0" else job_dir / f"{name}.log"))
        log.info("pipeline %s: %d replica(s): %s", pid, len(runs), " ".join(runs[0].cmd) if runs else "")
        plan = self.preempt if preempt.strategy_name(inputs) == "SPOT" else None
        failed = replicas.run_all(runs, group, plan=plan, on_restart=restarted,
                                  cancelled=lambda: pipeline.get("state") == states + "CANCELLING")
        if failed is None:
            return None
        path = next(r.log_path for r in runs if r.name == failed[0])
        return failed[0], failed[1], path

    def _job_env(self, pool: dict[str, Any], base_uri: str, inputs: dict[str, Any]) -> dict[str, str]:
        spec = (pool.get("python_package_spec") or pool.get("pythonPackageSpec") or pool.get("containerSpec")
                or pool.get("container_spec") or {})
        env = dict(os.environ)
        env.update({e["name"]: str(e.get("value", "")) for e in spec.get("env", [])})
        env.update({
            "AIP_MODEL_DIR": f"{base_uri}/model/",
            "AIP_CHECKPOINT_DIR": f"{base_uri}/checkpoints/",
            "CLOUD_ML_PROJECT_ID": self.project,
            "STORAGE_EMULATOR_HOST": self.gcs_url,
            LOCAL_ENV: "1",
            "PYTHONUNBUFFERED": "1",
        })
        if inputs.get("tensorboard"):
            env["AIP_TENSORBOARD_LOG_DIR"] = f"{base_uri}/logs/"
        else:
            env.pop("AIP_TENSORBOARD_LOG_DIR", None)
        return env

    def _set_pipeline(self, pipeline: dict[str, Any], state: str, **extra: Any) -> None:
        with self.lock:
            pipeline.update(state=state, updateTime=now(), **extra)

    def cancel_pipeline(self, pid: str, kind: str = "pipeline") -> None:
        """Cancel a TrainingPipeline or CustomJob (ids are unique across kinds) and stop its process."""
        states = "PIPELINE_STATE_" if kind == "pipeline" else "JOB_STATE_"
        with self.lock:
            proc = self.processes.get(pid)
            pipeline = (self.pipelines if kind == "pipeline" else self.custom_jobs)[pid]
            if pipeline["state"] in (states + "SUCCEEDED", states + "FAILED", states + "CANCELLED"):
                return
            pipeline["state"] = states + "CANCELLING"
        if proc and proc.poll() is None:
            proc.terminate()  # a `replicas.Group`: every replica of the job
        elif proc is None:  # not started yet: nothing to wait for
            self._set_pipeline(pipeline, states + "CANCELLED", endTime=now())

    # --- models -----------------------------------------------------------------------------------

    def register_model(self, model: dict[str, Any], training_pipeline: str | None = None) -> dict[str, Any]:
        mid = self.new_id()
        record = {
            **{k: v for k, v in model.items() if k not in ("versionAliases",)},
            "name": f"{self.parent()}/models/{mid}",
            "versionId": "1",
            "versionAliases": ["default"],
            "createTime": now(), "updateTime": now(), "versionCreateTime": now(),
            # the SDK only sends machine resources when the model says it takes them
            "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
        }
        if training_pipeline:
            record["trainingPipeline"] = training_pipeline
        with self.lock:
            self.models[mid] = record
        return record

    # --- serving ----------------------------------------------------------------------------------

    def start_server(self, model: dict[str, Any], dmid: str, endpoint_id: str) -> Deployment:
        """Start `python -m flant5_lib serve` as Vertex would start the serving container (the project's serving
        images only; anything else fails clearly instead of silently serving the project's server)."""
        spec = model.get("containerSpec", {})
        checks.serving_image(spec.get("imageUri", ""))
        port = free_port()
        env = dict(os.environ)
        env.update({
            "AIP_HTTP_PORT": str(port),
            "AIP_HEALTH_ROUTE": spec.get("healthRoute") or "/health",
            "AIP_PREDICT_ROUTE": spec.get("predictRoute") or "/predict",
            "AIP_STORAGE_URI": model.get("artifactUri", ""),
            "AIP_DEPLOYED_MODEL_ID": dmid,
            "AIP_ENDPOINT_ID": endpoint_id,
            "AIP_MODE": "PREDICTION",
            "STORAGE_EMULATOR_HOST": self.gcs_url,
            "PYTHONUNBUFFERED": "1",
        })
        log_path = self.log_path("server", dmid)
        cmd = [sys.executable, "-m", "flant5_lib", "serve", "--host", "127.0.0.1"]
        work = self.workdir / "servers" / dmid
        work.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        return Deployment(port, proc, log_path, env["AIP_PREDICT_ROUTE"], env["AIP_HEALTH_ROUTE"])

    def wait_healthy(self, dep: Deployment, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or self.deploy_timeout_s
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{dep.port}{dep.health_route}"
        answered, refused_since = False, None
        while time.monotonic() < deadline:
            # a server that answered and then stopped listening has shut down, even if its process lingers
            gone = answered and refused_since is not None and time.monotonic() - refused_since > 2.0
            if dep.process.poll() is not None or gone:
                stop_process(dep.process, timeout_s=2.0)
                raise ApiError(400, f"Model server stopped (exit code {dep.process.returncode}) before it was healthy. "
                                    f"Last log lines: {_tail(dep.log_path)} (full log: {dep.log_path})", "FAILED_PRECONDITION")
            try:
                with urllib.request.urlopen(url, timeout=2.0) as r:  # stdlib: no per-poll log lines
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as err:  # 503 while loading
                answered, refused_since = True, None
                detail = err.read().decode("utf-8", "replace")[:500]
                if "failed" in detail:  # the project's server says why it will never be ready: no need to wait
                    stop_process(dep.process, timeout_s=2.0)
                    raise ApiError(400, f"Model server failed to start: {detail} (log: {dep.log_path})",
                                   "FAILED_PRECONDITION") from None
            except (urllib.error.URLError, OSError):
                refused_since = refused_since or time.monotonic()
            time.sleep(0.25)
        stop_process(dep.process)
        raise ApiError(504, f"Model server did not answer 200 on {dep.health_route} within {timeout_s:.0f} s "
                            f"(log: {dep.log_path})", "DEADLINE_EXCEEDED")

    def forward_predict(self, dep: Deployment, body: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
        url = f"http://127.0.0.1:{dep.port}{dep.predict_route}"
        try:
            r = httpx.post(url, json=body, timeout=timeout_s)
        except httpx.HTTPError as err:
            raise ApiError(503, f"model server unreachable: {err}", "UNAVAILABLE") from None
        try:
            answer = r.json()
        except ValueError:
            answer = {"detail": r.text[:300]}
        if r.status_code != 200:
            detail = answer.get("detail") or answer.get("error") or answer if isinstance(answer, dict) else answer
            if r.status_code == 429:  # overload stays retryable: the SDK raises ResourceExhausted, as Vertex's own 429
                raise ApiError(429, f"model server answered 429: {detail}", "RESOURCE_EXHAUSTED")
            if r.status_code == 503:
                raise ApiError(503, f"model server answered 503: {detail}", "UNAVAILABLE")
            if 400 <= r.status_code < 500:  # Vertex relays a container's 4xx as 400 INVALID_ARGUMENT (BadRequest)
                raise ApiError(400, f"model server answered {r.status_code}: {detail}", "INVALID_ARGUMENT")
            raise ApiError(500, f"model server answered {r.status_code}: {detail}")
        return answer

    def forward_raw(self, dep: Deployment, raw: bytes, content_type: str, timeout_s: float = 120.0) -> httpx.Response:
        """:rawPredict: the body goes to the container as it is, and its answer comes back as it is."""
        url = f"http://127.0.0.1:{dep.port}{dep.predict_route}"
        try:
            return httpx.post(url, content=raw, headers={"Content-Type": content_type}, timeout=timeout_s)
        except httpx.HTTPError as err:
            raise ApiError(503, f"model server unreachable: {err}", "UNAVAILABLE") from None

    def stop_deployment(self, dmid: str) -> None:
        with self.lock:
            dep = self.deployments.pop(dmid, None)
        if dep:
            stop_process(dep.process)

    def shutdown(self) -> None:
        for dmid in list(self.deployments):
            self.stop_deployment(dmid)
        with self.lock:
            procs = list(self.processes.values())
        for proc in procs:
            proc.terminate()  # `replicas.Group.terminate` stops (SIGTERM, then SIGKILL) every replica


def run_batch_job(backend: Backend, job: dict[str, Any]) -> None:
    """Batch prediction: start the model's server, send the JSONL instances, write Vertex-style result files."""
    jid = job["name"].rsplit("/", 1)[1]

    def update(**kw: Any) -> None:
        with backend.lock:
            if job.get("state") == "JOB_STATE_CANCELLING" and kw.get("state") != "JOB_STATE_RUNNING":
                kw["state"] = "JOB_STATE_CANCELLED"  # batchPredictionJobs.cancel arrived while it ran
            job.update(updateTime=now(), **kw)

    update(state="JOB_STATE_RUNNING", startTime=now())
    dep = None
    try:
        mid = job["model"].rsplit("/", 1)[1].split("@")[0]
        model = backend.models.get(mid)
        if model is None:
            raise ApiError(404, f"Model {job['model']} not found")
        cfg = job.get("inputConfig", {})
        if cfg.get("instancesFormat", "jsonl") != "jsonl":
            raise ApiError(400, "the local stand-in reads instancesFormat 'jsonl' only")
        instances: list[Any] = []
        for uri in cfg.get("gcsSource", {}).get("uris", []):
            for n, line in enumerate(storage.read_text(uri).splitlines(), 1):
                if line.strip():
                    try:
                        instances.append(json.loads(line))
                    except ValueError:
                        raise ApiError(400, f"{uri} line {n}: not valid JSON") from None
        dep = backend.start_server(model, f"batch-{jid}", "batch")
        backend.wait_healthy(dep)
        rows = []
        for i in range(0, len(instances), 16):
            if job.get("state") == "JOB_STATE_CANCELLING":
                break
            chunk = instances[i : i + 16]
            preds = backend.forward_predict(dep, {"instances": chunk})["predictions"]
            rows += [{"instance": a, "prediction": b} for a, b in zip(chunk, preds)]
        prefix = job["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
        stamp = f"{dt.datetime.now(dt.timezone.utc):%Y_%m_%dT%H_%M_%S_%f}"[:-3]
        out_dir = f"{prefix}/prediction-{model.get('displayName', mid)}-{stamp}"  # Vertex's folder naming
        storage.write_text(f"{out_dir}/prediction.results-00000-of-00001",
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        update(state="JOB_STATE_SUCCEEDED", endTime=now(), outputInfo={"gcsOutputDirectory": out_dir},
               completionStats={"successfulCount": str(len(rows))})
    except ApiError as err:
        update(state="JOB_STATE_FAILED", endTime=now(), error=err.rpc_status())
    except Exception as err:  # never leave the SDK polling forever
        log.exception("batch job %s crashed", jid)
        update(state="JOB_STATE_FAILED", endTime=now(), error=ApiError(500, f"{type(err).__name__}: {err}").rpc_status())
    finally:
        if dep is not None:
            stop_process(dep.process)
