"""TensorBoard instances in the stand-in: `aiplatform.Tensorboard.create()`, get and list, REST shapes as Vertex's.

`Backend.tensorboards` holds the names that exist (the built-in one, and every one created here); a job naming any
other is refused (`checks.tensorboard`), as Vertex refuses a TENSORBOARD_RESOURCE_NAME it does not know. Nothing is
stored in them: experiments and uploaded runs are not emulated.
"""

from __future__ import annotations

import copy
from typing import Any

from flant5_lib.vertex.localstack.backend import Backend, now
from flant5_lib.vertex.localstack.errors import ApiError


def _record(b: Backend, name: str) -> dict[str, Any]:
    return copy.deepcopy(b.tensorboard_records.get(name) or {"name": name, "displayName": name.rsplit("/", 1)[1]})


def create(b: Backend, body: dict[str, Any]) -> dict[str, Any]:
    """POST tensorboards: displayName is required (Vertex: 400); answered with a finished operation."""
    if not body.get("displayName"):
        raise ApiError(400, "Tensorboard.displayName is required.")
    name = f"{b.parent()}/tensorboards/{b.new_id()}"
    record = {**copy.deepcopy(body), "name": name, "createTime": now(), "updateTime": now(), "runCount": 0}
    with b.lock:
        b.tensorboards.add(name)
        b.tensorboard_records[name] = record
    return b.operation(b.parent(), done=True, response=copy.deepcopy(record), response_type="Tensorboard",
                       metadata_type="CreateTensorboardOperationMetadata")


def get(b: Backend, rid: str) -> dict[str, Any]:
    name = f"{b.parent()}/tensorboards/{rid}"
    with b.lock:
        if name not in b.tensorboards:
            raise ApiError(404, f"Tensorboard {name} is not found.")
        return _record(b, name)


def list_(b: Backend) -> dict[str, Any]:
    with b.lock:
        return {"tensorboards": [_record(b, n) for n in sorted(b.tensorboards)]}
