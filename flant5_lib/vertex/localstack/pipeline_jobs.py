"""PipelineJobs in the stand-in: what `aiplatform.PipelineJob(...).submit()`, get, list, `wait()` and cancel call.

A submitted spec is refused as Vertex refuses it (no spec, a bad job id or a taken one, a pipeline root that is not
gs://, parameters the spec does not declare, lacks or types otherwise), then run by Kubeflow's own local
orchestrator (`kfp.local`, SubprocessRunner in this Python: no Docker, so every component must be a lightweight
Python one that imports from this environment) in a worker process per job. The worker reads kfp's log lines and
writes each task's state; the stand-in reports them as Vertex does (`jobDetail.taskDetails`: RUNNING, SUCCEEDED,
FAILED, NOT_TRIGGERED for a branch whose condition was false or whose upstream failed, CANCELLED). The job ends
PIPELINE_STATE_SUCCEEDED only if every task that ran succeeded; an exit handler that ran after a failure does not
make it succeed, on Vertex either.

Not checked (docs/vertex.md's table): the images in the spec (the worker runs every component here), resource
requests (`set_cpu_limit`, accelerators), caching, and artifacts: they are written to the job's local folder,
not to the gs:// pipeline root.

    python -m flant5_lib.vertex.localstack.pipeline_jobs JOB_DIR     # the worker (the stand-in starts it)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flant5_lib.vertex.localstack.backend import Backend, now
from flant5_lib.vertex.localstack.errors import ApiError

log = logging.getLogger(__name__)
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_DONE = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
# the spec's parameter types -> the JSON values Vertex accepts for them
_TYPES: dict[str, tuple[type, ...]] = {"STRING": (str,), "BOOLEAN": (bool,), "NUMBER_INTEGER": (int,),
                                       "NUMBER_DOUBLE": (int, float), "STRUCT": (dict,), "LIST": (list,)}


def _parameters(spec: dict[str, Any], values: dict[str, Any]) -> None:
    """400 for a parameter the pipeline does not declare, a required one left out, or a value of the wrong type."""
    declared = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    for key in values:
        if key not in declared:
            raise ApiError(400, f"runtimeConfig.parameterValues: the pipeline has no input parameter {key!r}; "
                                f"it declares {', '.join(sorted(declared)) or 'none'}.")
    for key, decl in declared.items():
        kind = decl.get("parameterType", "STRING")
        if key not in values:
            if not decl.get("isOptional") and "defaultValue" not in decl:
                raise ApiError(400, f"runtimeConfig.parameterValues: the required input parameter {key!r} "
                                    f"({kind}) has no value.")
            continue
        value = values[key]
        if kind == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer():
            continue  # JSON (and protobuf's Value, which the SDK sends) has one number type
        ok = _TYPES.get(kind, (object,))
        if not isinstance(value, ok) or (kind in ("NUMBER_INTEGER", "NUMBER_DOUBLE") and isinstance(value, bool)):
            raise ApiError(400, f"runtimeConfig.parameterValues[{key!r}]: {type(value).__name__} value given for "
                                f"a {kind} parameter.")


def create(b: Backend, body: dict[str, Any], q: dict[str, list[str]]) -> dict[str, Any]:
    """POST pipelineJobs?pipelineJobId=...: validated, recorded PENDING, its worker started."""
    spec = body.get("pipelineSpec")
    if not spec:
        raise ApiError(400, "PipelineJob.pipeline_spec is required.")
    if not (spec.get("root") or {}).get("dag") or not (spec.get("deploymentSpec") or {}).get("executors"):
        raise ApiError(400, "PipelineJob.pipeline_spec: not a compiled pipeline (no root.dag or no "
                            "deploymentSpec.executors); compile it with kfp's compiler.")
    runtime = body.get("runtimeConfig") or {}
    root = runtime.get("gcsOutputDirectory") or spec.get("defaultPipelineRoot")
    if not root:
        raise ApiError(400, "PipelineJob.runtime_config.gcs_output_directory is required: the pipeline has no "
                            "default pipeline root.")
    if not str(root).startswith("gs://"):
        raise ApiError(400, f"PipelineJob.runtime_config.gcs_output_directory: {root!r} is not a gs:// path.")
    _parameters(spec, runtime.get("parameterValues") or {})
    rid = (q.get("pipelineJobId") or [""])[0] or b.new_id()
    if not _ID.match(rid):
        raise ApiError(400, f"pipelineJobId {rid!r}: must match [a-z0-9][a-z0-9-]{{0,127}}.")
    name = f"{b.parent()}/pipelineJobs/{rid}"
    job = {**copy.deepcopy(body), "name": name, "state": "PIPELINE_STATE_PENDING", "createTime": now(),
           "updateTime": now(), "jobDetail": {"taskDetails": []}}
    with b.lock:
        if rid in b.pipeline_jobs:
            raise ApiError(409, f"PipelineJob {name} already exists.")
        b.pipeline_jobs[rid] = job
    threading.Thread(target=_run, args=(b, job), daemon=True, name=f"pipelinejob-{rid}").start()
    return copy.deepcopy(job)


def _job_dir(b: Backend, rid: str) -> Path:
    return b.workdir / "jobs" / f"pipelinejob-{rid}"


def _update(b: Backend, job: dict[str, Any], **fields: Any) -> None:
    with b.lock:
        job.update(updateTime=now(), **fields)


def _tasks(job_dir: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((job_dir / "tasks.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # not written yet, or being replaced


def _run(b: Backend, job: dict[str, Any]) -> None:
    """The worker process to its end; its tasks' states copied into the job as they change."""
    rid = job["name"].rsplit("/", 1)[1]
    job_dir = _job_dir(b, rid)
    job_dir.mkdir(parents=True, exist_ok=True)
    runtime = job.get("runtimeConfig") or {}
    from flant5_lib.fileio import write_json

    write_json(job_dir / "job.json", {"pipelineSpec": job["pipelineSpec"],
                                      "parameterValues": runtime.get("parameterValues") or {}})
    env = {**os.environ, "STORAGE_EMULATOR_HOST": b.gcs_url, "PYTHONUNBUFFERED": "1"}
    with open(job_dir / "pipeline.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", __name__, str(job_dir)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)  # its own group: cancel stops every task
    with b.lock:
        b.processes[rid] = _Worker(proc)
        cancelled = job["state"] == "PIPELINE_STATE_CANCELLING"
    if cancelled:
        _stop(proc)
    _update(b, job, state="PIPELINE_STATE_RUNNING", startTime=now())
    while proc.poll() is None:
        _update(b, job, jobDetail={"taskDetails": _tasks(job_dir)})
        time.sleep(0.5)
    tasks = _tasks(job_dir)
    with b.lock:
        cancelling = job["state"] == "PIPELINE_STATE_CANCELLING"
    if cancelling:
        tasks = [{**t, "state": "CANCELLED"} if t["state"] in ("PENDING", "RUNNING") else t for t in tasks]
        _update(b, job, state="PIPELINE_STATE_CANCELLED", endTime=now(), jobDetail={"taskDetails": tasks},
                error=ApiError(499, "The pipeline was cancelled.", "CANCELLED").rpc_status())
        return
    failed = [t["taskName"] for t in tasks if t["state"] == "FAILED"]
    if proc.returncode == 0 and not failed:
        _update(b, job, state="PIPELINE_STATE_SUCCEEDED", endTime=now(), jobDetail={"taskDetails": tasks})
        return
    why = (f"The DAG failed because some tasks failed. The failed tasks are: [{', '.join(failed)}]."
           if failed else f"The pipeline's runner exited with status {proc.returncode}; see {job_dir / 'pipeline.log'}")
    _update(b, job, state="PIPELINE_STATE_FAILED", endTime=now(), jobDetail={"taskDetails": tasks},
            error=ApiError(400, why, "FAILED_PRECONDITION").rpc_status())


def _stop(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class _Worker:
    """What `Backend.processes` holds for a pipeline job: terminate() stops the worker and every task it started."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        _stop(self.proc)


def cancel(b: Backend, rid: str) -> None:
    """:cancel: CANCELLING now, CANCELLED once every task's process has stopped (`_run` sees it end)."""
    with b.lock:
        job = b.pipeline_jobs[rid]
        if job["state"] in _DONE:
            raise ApiError(400, f"Cannot cancel PipelineJob {job['name']}: it is in state {job['state']}.",
                           "FAILED_PRECONDITION")
        job.update(state="PIPELINE_STATE_CANCELLING", updateTime=now())
        proc = b.processes.get(rid)
    if proc is not None:
        threading.Thread(target=proc.terminate, daemon=True).start()


def in_use(b: Backend, job: dict[str, Any]) -> str | None:
    return None if job["state"] in _DONE else "is running; cancel it first."


# --- the worker: kfp's local orchestrator on the submitted spec --------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EVENTS = ((re.compile(r"^Executing task '([^']+)'"), "RUNNING"),
           (re.compile(r"^Task '([^']+)' finished with status SUCCESS"), "SUCCEEDED"),
           (re.compile(r"^Task '([^']+)' finished with status FAILURE"), "FAILED"),
           (re.compile(r"^Skipping conditional task (\S+)"), "NOT_TRIGGERED"),
           (re.compile(r"^Skipping task (\S+?):"), "NOT_TRIGGERED"))


class _TaskStates(logging.Handler):
    """kfp.local logs every task's start and end; this keeps them as Vertex's taskDetails, in tasks.json."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path, self.tasks = path, {}  # type: ignore[var-annotated]
        self.failed_pipeline = False

    def emit(self, record: logging.LogRecord) -> None:
        from flant5_lib.fileio import write_json

        text = _ANSI.sub("", record.getMessage())
        if text.startswith("Pipeline ") and "finished with status FAILURE" in text:
            self.failed_pipeline = True
        for pattern, state in _EVENTS:
            m = pattern.match(text)
            if m:
                name = m.group(1)
                row = self.tasks.setdefault(name, {"taskId": str(len(self.tasks) + 1), "taskName": name,
                                                   "createTime": now()})
                row["state"] = state
                row["startTime" if state == "RUNNING" else "endTime"] = now()
                write_json(self.path, list(self.tasks.values()))
                return


def _worker(job_dir: Path) -> int:
    from google.protobuf import json_format
    from kfp import local
    from kfp.local import logging_utils, pipeline_orchestrator
    from kfp.pipeline_spec import pipeline_spec_pb2

    job = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    spec = json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=True)
    states = _TaskStates(job_dir / "tasks.json")
    plain = logging_utils.local_logger_context

    @contextlib.contextmanager
    def watched() -> Iterator[None]:  # kfp swaps the root logger's handlers for each block it logs: add ours to them
        with plain():
            if states not in logging.getLogger().handlers:
                logging.getLogger().addHandler(states)
            yield

    logging_utils.local_logger_context = watched
    logging.getLogger().addHandler(states)  # and what it logs outside those blocks (skipped branches)
    logging.getLogger().setLevel(logging.INFO)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(job_dir / "root"),
               raise_on_error=False)
    pipeline_orchestrator.run_local_pipeline(spec, job["parameterValues"])
    return 1 if states.failed_pipeline else 0


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
