"""The offline Vertex stand-in for tests, with the SDK's job polling sped up (it polls every 5 s by default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flant5_lib.vertex.localstack import LocalStack, answer_project_number, start_local_stack


@contextmanager
def fast_stack(workdir: Path, **kwargs: Any) -> Iterator[LocalStack]:
    """`start_local_stack(workdir, **kwargs)` while the SDK polls jobs every 0.3 s."""
    from google.cloud.aiplatform import jobs, pipeline_jobs, training_jobs

    with pytest.MonkeyPatch.context() as mp:
        for module in (training_jobs, jobs, pipeline_jobs):
            mp.setattr(module, "_JOB_WAIT_TIME", 0.3)
        with start_local_stack(workdir, **kwargs) as stack:
            answer_project_number(stack.project)  # PipelineJob.submit() asks Resource Manager otherwise (~50 s)
            yield stack


def vertex_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`flant5 vertex ARGV...` in this process: (exit code, stdout, stderr)."""
    from flant5_lib.cli import main

    code = main(["vertex", *argv])
    out, err = capsys.readouterr()
    return code, out, err
