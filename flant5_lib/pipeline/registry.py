"""Model Registry versions through the Vertex SDK: the incumbent, a new version of the same model, promotion."""

from __future__ import annotations

from typing import Any

from flant5_lib.config import Params
from flant5_lib.vertex import images, rules
from flant5_lib.vertex.jobs import init_sdk


def incumbent(params: Params) -> Any:
    """The default version of the model named `model_display_name` (the newest such model), or None."""
    aiplatform = init_sdk(params)
    found = sorted(aiplatform.Model.list(filter=f'display_name="{params.model_display_name}"'),
                   key=lambda m: m.create_time, reverse=True)
    return found[0] if found else None


def register_version(params: Params, artifact_uri: str, parent: str | None, *, default: bool,
                     aliases: tuple[str, ...] = ("candidate",)) -> Any:
    """Upload `artifact_uri` (gs://) as a new version of `parent` (a model resource name), or as version 1 of a new
    model when there is none. `default=True` moves the `default` alias to it at once."""
    rules.check_request(params)
    aiplatform = init_sdk(params)
    return aiplatform.Model.upload(
        display_name=params.model_display_name, artifact_uri=artifact_uri, parent_model=parent,
        is_default_version=default, version_aliases=list(aliases),
        serving_container_image_uri=images.serving_image(params),
        serving_container_predict_route=params.serving_predict_route,
        serving_container_health_route=params.serving_health_route,
        serving_container_ports=[params.serving_port],
        upload_request_timeout=params.vertex_request_timeout_s, sync=True)


def promote(params: Params, model_name: str, version: str) -> Any:
    """Make `model_name@version` the default version (it keeps its other aliases; `candidate` is dropped)."""
    aiplatform = init_sdk(params)
    registry = aiplatform.models.ModelRegistry(model_name)
    registry.add_version_aliases(["default"], version=version)
    if "candidate" in (registry.get_version_info(version).version_aliases or []):
        registry.remove_version_aliases(["candidate"], version=version)
    return aiplatform.Model(model_name, version=version)


def versions(params: Params, model_name: str) -> list[dict[str, Any]]:
    """Every version of a model, oldest first: id, aliases, created."""
    aiplatform = init_sdk(params)
    rows = aiplatform.models.ModelRegistry(model_name).list_versions()
    return sorted(({"version_id": v.version_id, "aliases": list(v.version_aliases or []),
                    "created": str(v.version_create_time)} for v in rows), key=lambda r: int(r["version_id"]))
