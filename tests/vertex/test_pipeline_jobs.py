"""pipelineJobs in the stand-in, through the real SDK (`aiplatform.PipelineJob`) and specs compiled by the real kfp:
run by kfp's local orchestrator, task states as Vertex reports them, failures, an exit handler, cancel, and the
refusals Vertex makes before anything runs. The release pipeline itself, submitted this way: tests/pipeline.

No `from __future__ import annotations` here: kfp reads the component functions' annotations as types."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions

from flant5_lib.vertex.localstack import LocalStack
from tests.helpers.vertex import fast_stack

kfp = pytest.importorskip("kfp", reason="kfp is in the project's environment (the `pipeline` extra)")
from kfp import compiler, dsl  # noqa: E402


def add(a: int, b: int) -> int:
    return a + b


def say(text: str, out: str) -> str:
    from pathlib import Path

    Path(out).write_text(text)
    return text


def fail(why: str) -> str:
    raise RuntimeError(why)


def blocked(out: str) -> str:
    """Says it started, then waits for a file nobody writes: it can only end by being stopped (no race with cancel)."""
    import time
    from pathlib import Path

    Path(out).write_text("started")
    while not Path(out + ".release").exists():
        time.sleep(0.2)
    return "released"


def _comp(fn: Any) -> Any:
    return dsl.component(fn, base_image="python:3.11", install_kfp_package=False)


@dsl.pipeline(name="branches")
def branches(a: int, out: str, b: int = 2) -> None:
    total = _comp(add)(a=a, b=b)
    with dsl.If(total.output > 3):
        _comp(say)(text="big", out=out)
    with dsl.Else():
        _comp(say)(text="small", out=out)


@dsl.pipeline(name="failing")
def failing(out: str) -> None:
    done = _comp(say)(text="exit handler ran", out=out)
    with dsl.ExitHandler(done):
        _comp(fail)(why="a step fails")


@dsl.pipeline(name="blocking")
def blocking(out: str) -> None:
    _comp(blocked)(out=out)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with fast_stack(tmp_path_factory.mktemp("pipeline-jobs")) as s:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import aiplatform

        aiplatform.init(project=s.project, location=s.region, api_endpoint=s.api_endpoint, api_transport="rest",
                        credentials=AnonymousCredentials())
        yield s


def _job(stack: LocalStack, tmp_path: Path, pipeline: Any, **values: Any) -> Any:
    from google.cloud import aiplatform

    spec = tmp_path / f"{pipeline.name}.yaml"
    compiler.Compiler().compile(pipeline, str(spec))
    return aiplatform.PipelineJob(display_name=pipeline.name, template_path=str(spec),
                                  pipeline_root=f"{stack.bucket}/pipeline_root", parameter_values=values)


def _states(job: Any) -> dict[str, str]:
    return {t.task_name: t.state.name for t in job.task_details}


def test_a_pipeline_runs_with_its_branches_as_vertex_reports_them(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "said.txt"
    job = _job(stack, tmp_path, branches, a=5, out=str(out))
    job.submit()
    job.wait()
    assert job.state.name == "PIPELINE_STATE_SUCCEEDED"
    assert out.read_text() == "big"  # 5 + 2 > 3: the If branch ran, the Else did not
    states = _states(job)
    assert states["add"] == "SUCCEEDED" and "NOT_TRIGGERED" in states.values()
    listed = [j.resource_name for j in type(job).list(filter='display_name="branches"')]
    assert job.resource_name in listed


def test_a_failed_step_fails_the_job_after_its_exit_handler_ran(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "exit.txt"
    job = _job(stack, tmp_path, failing, out=str(out))
    job.submit()
    with pytest.raises(RuntimeError, match=r"failed tasks are: \[fail\]"):
        job.wait()
    assert job.state.name == "PIPELINE_STATE_FAILED"
    assert out.read_text() == "exit handler ran"
    assert _states(job)["fail"] == "FAILED" and _states(job)["say"] == "SUCCEEDED"


def test_cancel_stops_a_running_task(stack: LocalStack, tmp_path: Path) -> None:
    marker = tmp_path / "started.txt"
    job = _job(stack, tmp_path, blocking, out=str(marker))
    job.submit()
    deadline = time.monotonic() + 600  # hang guards only (pytest-timeout is 900 s): a loaded machine starts slowly
    while not marker.exists():  # the task's own process has started
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.2)
    job.cancel()
    t0 = time.monotonic()
    while job.state.name not in ("PIPELINE_STATE_CANCELLED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_SUCCEEDED"):
        assert time.monotonic() - t0 < 300, f"still {job.state.name}"
        time.sleep(0.3)
    assert job.state.name == "PIPELINE_STATE_CANCELLED"
    with pytest.raises(exceptions.BadRequest, match="PIPELINE_STATE_CANCELLED"):
        job.cancel()  # Vertex refuses to cancel a job that has ended


def _create_raw(stack: LocalStack, tmp_path: Path, root: str, values: dict[str, Any]) -> Any:
    """POST pipelineJobs past the SDK's own checks (PipelineJob() refuses unknown parameters itself): what the
    service refuses, for clients that are not this SDK."""
    import yaml
    from google.cloud.aiplatform.compat.types import pipeline_job as gca_pipeline_job

    spec = tmp_path / "raw.yaml"
    compiler.Compiler().compile(branches, str(spec))
    client = _job(stack, tmp_path, branches, a=1, out="o").api_client
    body = gca_pipeline_job.PipelineJob(display_name="raw", pipeline_spec=yaml.safe_load(spec.read_text()),
                                        runtime_config={"gcs_output_directory": root, "parameter_values": values})
    return client.create_pipeline_job(parent=f"projects/{stack.project}/locations/{stack.region}", pipeline_job=body)


@pytest.mark.parametrize("root, values, message", [
    ("gs://b/r", {"out": "x"}, "required input parameter 'a'"),
    ("gs://b/r", {"a": 1, "out": "x", "c": 3}, "no input parameter 'c'"),
    ("gs://b/r", {"a": "five", "out": "x"}, "str value given for a NUMBER_INTEGER parameter"),
    ("gs://b/r", {"a": 1.5, "out": "x"}, "float value given for a NUMBER_INTEGER parameter"),
    ("/tmp/root", {"a": 1, "out": "x"}, "not a gs:// path"),
])
def test_what_the_service_refuses_before_anything_runs(stack: LocalStack, tmp_path: Path, root: str,
                                                        values: dict[str, Any], message: str) -> None:
    with pytest.raises(exceptions.BadRequest, match=message):
        _create_raw(stack, tmp_path, root, values)


def test_a_taken_job_id_is_refused(stack: LocalStack, tmp_path: Path) -> None:
    first = _job(stack, tmp_path, branches, a=0, out=str(tmp_path / "o.txt"))
    first.job_id = "same-id"
    first.submit()
    again = _job(stack, tmp_path, branches, a=0, out=str(tmp_path / "o.txt"))
    again.job_id = "same-id"
    with pytest.raises(exceptions.Conflict, match="already exists"):
        again.submit()
    first.wait()
    assert (tmp_path / "o.txt").read_text() == "small"  # 0 + 2 <= 3: the Else branch
