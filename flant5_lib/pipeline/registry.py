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


def checked_incumbent(params: Params) -> Any:
    """`incumbent(params)`, refused in one line when `gate_against: incumbent` needs one and there is none (the CLI
    asks before anything runs; preflight asks again inside the pipeline)."""
    from flant5_lib.errors import UserError

    inc = incumbent(params)
    if inc is None and params.gate_against == "incumbent":
        raise UserError("gate_against: 'incumbent' is set but no version of model "
                        f"{params.model_display_name!r} is aliased 'default'; register one first or use incumbent_if_any")
    return inc


def register_version(params: Params, artifact_uri: str, parent: str | None, *, default: bool,
                     aliases: tuple[str, ...] = ("candidate",)) -> Any:
    """Upload `artifact_uri` (gs://) as a new version of `parent` (a model resource name), or as version 1 of a new
    model when there is none. `default=True` moves the `default` alias to it at once."""
    rules.check_request(params)
    aiplatform = init_sdk(params)
    if parent:
        drop_alias(params, parent, "candidate")  # a failed run's candidate: Vertex refuses one alias on two versions
    return aiplatform.Model.upload(
        display_name=params.model_display_name, artifact_uri=artifact_uri, parent_model=parent,
        is_default_version=default, version_aliases=list(aliases),
        serving_container_image_uri=images.serving_image(params),
        serving_container_predict_route=params.serving_predict_route,
        serving_container_health_route=params.serving_health_route,
        serving_container_ports=[params.serving_port],
        upload_request_timeout=params.vertex_request_timeout_s, sync=True)


def drop_alias(params: Params, model_name: str, alias: str) -> list[str]:
    """Remove `alias` from whichever versions of `model_name` hold it; returns their ids."""
    aiplatform = init_sdk(params)
    registry = aiplatform.models.ModelRegistry(model_name)
    held = [v.version_id for v in registry.list_versions() if alias in (v.version_aliases or [])]
    for vid in held:
        registry.remove_version_aliases([alias], version=vid)
    return held


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


SUMMARIZATION_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/summarization_metrics_1.0.0.yaml"


def import_evaluation(params: Params, version_name: str, metrics: dict[str, Any], display_name: str) -> Any:
    """Attach the candidate's test ROUGE to `model@version` as a ModelEvaluation (summarization schema: its one
    field `rougeLSum`, as a fraction like Vertex's own evaluations; every score x 100 in `metadata`). Returns the
    SDK's ModelEvaluation."""
    from google.cloud.aiplatform.compat.types import model_evaluation as gca_me

    aiplatform = init_sdk(params)
    name, _, vid = version_name.partition("@")
    model = aiplatform.Model(name, version=vid or None)
    evaluation = gca_me.ModelEvaluation(
        display_name=display_name, metrics_schema_uri=SUMMARIZATION_SCHEMA,
        metrics={"rougeLSum": round(float(metrics["rougeLsum"]) / 100.0, 6)},
        metadata={k: metrics[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "n") if k in metrics})
    model.api_client.import_model_evaluation(parent=model.versioned_resource_name, model_evaluation=evaluation)
    return model.list_model_evaluations()[-1]
