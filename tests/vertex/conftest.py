"""One offline stand-in per test module (its own state and bucket, so one module's failure never cascades into
another's), and a state file that points the CLI at it. A module that needs other settings defines its own `stack`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flant5_lib.vertex.localstack import LocalStack
from tests.helpers.vertex import fast_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with fast_stack(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as st:
        yield st


@pytest.fixture()
def state_file(stack: LocalStack, tmp_path: Path) -> str:
    return str(stack.write_state(tmp_path / "state.json"))
