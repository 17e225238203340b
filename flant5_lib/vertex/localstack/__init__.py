"""Offline stand-ins for Google Cloud: a GCS emulator and a local Vertex AI API, both on 127.0.0.1.

    with start_local_stack("runs/localstack") as stack:
        params = load_params("params/vertex-a100.yaml", stack.params_overrides())
        ...  # the real Vertex SDK and storage client now talk to the stand-ins

The stand-in does the work for real: training jobs run the command the project's image would run (its ENTRYPOINT,
read from training/Dockerfile), deployments start the project's prediction server, and `:predict` is forwarded to
it. It refuses what Vertex refuses (`checks`: machines, GPUs per region, TensorBoard, images it cannot emulate) and
honours list filters and ordering (`listing`); the README's table says what it cannot do.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flant5_lib.procs import free_port
from flant5_lib.vertex.images import SERVE_IMAGE
from flant5_lib.vertex.localstack.emulator import GcsEmulator, start_gcs_emulator

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "local-project"
DEFAULT_REGION = "us-central1"
DEFAULT_BUCKET = "gs://flant5-local"
DEFAULT_TENSORBOARD = "tensorboards/local"  # the one TensorBoard the stand-in knows (others: 404 as on Vertex)


@dataclass
class LocalStack:
    """A running stand-in pair; use as a context manager or call `stop()`."""

    workdir: Path
    api_endpoint: str
    gcs_endpoint: str
    project: str
    region: str
    bucket: str
    backend: Any
    _gcs: GcsEmulator
    _server: Any
    _thread: threading.Thread
    _old_env: dict[str, str | None] = field(default_factory=dict)
    _stopped: bool = False

    def env(self) -> dict[str, str]:
        """Environment variables a process needs to reach the stand-ins."""
        return {"STORAGE_EMULATOR_HOST": self.gcs_endpoint}

    def params_overrides(self) -> dict[str, Any]:
        """Params fields that point the `flant5 vertex` code at the stand-ins."""
        return {
            "vertex_mode": "local",
            "vertex_api_endpoint": self.api_endpoint,
            "gcp_project": self.project,
            "gcp_region": self.region,
            "staging_bucket": self.bucket,
            # the project's images in this project's registry: never pulled, the stand-in maps them to their
            # Dockerfiles (training ENTRYPOINT) and to `flant5 serve`
            "image_registry": self.registry(),
            "serving_container_uri": f"{self.registry()}/{SERVE_IMAGE}:latest",
            "service_account": f"flant5-local@{self.project}.iam.gserviceaccount.com",
            "tensorboard_resource": f"projects/{self.project}/locations/{self.region}/{DEFAULT_TENSORBOARD}",
        }

    def registry(self) -> str:
        return f"{self.region}-docker.pkg.dev/{self.project}/flant5"

    def settings(self) -> dict[str, Any]:
        return {"api_endpoint": self.api_endpoint, "gcs_endpoint": self.gcs_endpoint, "workdir": str(self.workdir),
                "env": self.env(), "params": self.params_overrides()}

    def write_state(self, path: str | os.PathLike[str]) -> Path:
        from flant5_lib.fileio import write_json

        return write_json(path, self.settings())

    def requests(self, contains: str = "", method: str | None = None) -> list[dict[str, Any]]:
        """Requests the Vertex stand-in received (oldest first), optionally filtered by path and method."""
        with self.backend.lock:
            rows = list(self.backend.requests)
        return [r for r in rows if contains in r["path"] and (method is None or r["method"] == method)]

    def clear_requests(self) -> None:
        with self.backend.lock:
            self.backend.requests.clear()

    def stop(self) -> None:
        """Stop servers and jobs we started, the API and the emulator; restore the environment (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.backend.shutdown()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._gcs.stop()
        for key, old in self._old_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._old_env = {}

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_stack(
    workdir: str | os.PathLike[str],
    *,
    port: int | None = None,
    gcs_port: int | None = None,
    project: str = DEFAULT_PROJECT,
    region: str = DEFAULT_REGION,
    bucket: str = DEFAULT_BUCKET,
    set_env: bool = True,
    deploy_timeout_s: float = 300.0,
    sync_wait_s: float = 30.0,
    preempt: Any = None,
) -> LocalStack:
    """Start the emulator and the Vertex stand-in; with `set_env`, this process's storage clients use the emulator.
    `preempt` (a `localstack.preempt.PreemptPlan`) preempts and restarts the replicas of Spot jobs."""
    import uvicorn

    from flant5_lib import storage
    from flant5_lib.vertex.localstack.app import create_app
    from flant5_lib.vertex.localstack.backend import Backend

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    gcs = start_gcs_emulator(work / "gcs", port=gcs_port)
    backend = Backend(workdir=work, gcs_url=gcs.url, project=project, region=region, deploy_timeout_s=deploy_timeout_s,
                      sync_wait_s=sync_wait_s, preempt=preempt)
    backend.tensorboards.add(f"projects/{project}/locations/{region}/{DEFAULT_TENSORBOARD}")
    port = port or free_port()
    config = uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="vertex-stand-in")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            gcs.stop()
            raise RuntimeError(f"the Vertex stand-in did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    stack = LocalStack(work, f"http://127.0.0.1:{port}", gcs.url, project, region, bucket, backend, gcs, server, thread)
    if set_env:
        stack._old_env = {"STORAGE_EMULATOR_HOST": os.environ.get("STORAGE_EMULATOR_HOST")}
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_lib

    client = gcs_lib.Client(project=project, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs.url})
    storage.ensure_bucket(bucket, client=client)  # the SDK uploads packages there but never creates it
    atexit.register(stack.stop)  # no orphaned trainers or servers if the caller forgets
    log.info("Vertex stand-in on %s, GCS emulator on %s, bucket %s", stack.api_endpoint, gcs.url, bucket)
    return stack


def answer_project_number(project: str) -> None:
    """The stand-in's project number, where the Vertex SDK would ask Resource Manager (a service the stand-in does
    not serve; offline the SDK's call retries for about 50 s, then fails). `PipelineJob.submit()` asks it to check
    that the pipeline root's bucket belongs to the project; the GCS emulator's buckets say they belong to its
    project number, and so they do. Other projects still go to Resource Manager. Called where a PipelineJob is
    submitted in local mode (`pipeline.runner.submit`, the tests' `fast_stack`), not on every attach: it imports
    the SDK."""
    from gcp_storage_emulator import settings
    from google.cloud.aiplatform.utils import resource_manager_utils

    real = getattr(resource_manager_utils.get_project_number, "__wrapped__", resource_manager_utils.get_project_number)

    def get_project_number(project_id: str, credentials: Any = None) -> str:
        return str(settings.DEFAULT_PROJECT_NUMBER) if project_id == project else real(project_id, credentials)

    get_project_number.__wrapped__ = real  # type: ignore[attr-defined]
    resource_manager_utils.get_project_number = get_project_number


def attach(path: str | os.PathLike[str], *, require_alive: bool = False) -> dict[str, Any] | None:
    """Point this process at a running stand-in: read its state file, set its environment (STORAGE_EMULATOR_HOST ...)
    and return the params overrides that aim the Vertex code at it. The one way to attach (CLI and notebooks).

    With `require_alive`, a state file whose stand-in no longer answers gives None (the caller starts a new one).
    """
    from flant5_lib.procs import http_status

    state = load_state(path)
    if require_alive and http_status(f"{state['api_endpoint']}/_local/health") != 200:
        log.info("%s: stand-in no longer running", path)
        return None
    os.environ.update(state["env"])
    log.info("attached to the Vertex stand-in at %s", state["api_endpoint"])
    return dict(state["params"])


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a `--state-file` written by `flant5 vertex local-stack` (env + params overrides)."""
    from flant5_lib.errors import CloudError

    p = Path(path)
    if not p.is_file():
        raise CloudError(f"{p}: local-stack state file not found; start `flant5 vertex local-stack --state-file {p}` first")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        raise CloudError(f"{p}: not a local-stack state file (invalid JSON)") from None
    if not isinstance(data, dict) or "params" not in data or "env" not in data:
        raise CloudError(f"{p}: not a local-stack state file (needs 'env' and 'params')")
    return data
