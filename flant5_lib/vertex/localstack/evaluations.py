"""Model evaluations in the stand-in: `models/{id}[@version]/evaluations:import`, list and get, REST shapes as Vertex's.

An evaluation belongs to one model version (the default one when the parent has no `@`); its name is
`models/{id}/evaluations/{eid}` as Vertex names it. `metricsSchemaUri` must be one of the schema files Vertex
publishes under gs://google-cloud-aiplatform/schema/modelevaluation/; for the summarization schema the metrics are
checked against it (its one field, `rougeLSum`, a number). What Vertex checks beyond that is not known here
(docs/vertex.md, the table of what the stand-in cannot check).
"""

from __future__ import annotations

import copy
from typing import Any

from flant5_lib.vertex.localstack import versions
from flant5_lib.vertex.localstack.backend import Backend, now
from flant5_lib.vertex.localstack.errors import ApiError

SCHEMA_ROOT = "gs://google-cloud-aiplatform/schema/modelevaluation/"
SUMMARIZATION = SCHEMA_ROOT + "summarization_metrics_1.0.0.yaml"
# the schema files (GCPC's model-evaluation components name these); fields known for the one this project writes
SCHEMAS: dict[str, tuple[str, ...] | None] = {
    SUMMARIZATION: ("rougeLSum",),
    **{SCHEMA_ROOT + f"{kind}_metrics_1.0.0.yaml": None for kind in (
        "classification", "regression", "forecasting", "question_answering", "general_text_generation",
        "embedding")},
}


def _table(b: Backend, mid: str) -> dict[str, dict[str, Any]]:
    """eid -> evaluation record of one model (every version); kept beside the model's versions."""
    return b.model_evaluations.setdefault(mid, {})


def import_evaluation(b: Backend, mid: str, version: str | None, full: str, body: dict[str, Any]) -> dict[str, Any]:
    """`:import` with `{"modelEvaluation": {...}}`: refused as Vertex refuses it; returns the stored evaluation."""
    record = versions.resolve(b, mid, version, full)
    evaluation = body.get("modelEvaluation")
    if not isinstance(evaluation, dict) or not evaluation:
        raise ApiError(400, "model_evaluation is required.")
    uri = evaluation.get("metricsSchemaUri", "")
    if uri not in SCHEMAS:
        raise ApiError(400, f"ModelEvaluation.metricsSchemaUri {uri!r} is not a model evaluation schema; use one of "
                            f"{SCHEMA_ROOT}*_metrics_1.0.0.yaml (summarization: {SUMMARIZATION}).")
    metrics = evaluation.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ApiError(400, "ModelEvaluation.metrics is required: an object in the shape of metricsSchemaUri.")
    fields = SCHEMAS[uri]
    if fields is not None:
        unknown = sorted(set(metrics) - set(fields))
        bad = [k for k in fields if k in metrics and not isinstance(metrics[k], (int, float))]
        if unknown or bad:
            raise ApiError(400, f"ModelEvaluation.metrics does not match {uri}: "
                                + (f"unknown field {unknown[0]!r} (the schema has {', '.join(fields)})" if unknown
                                   else f"{bad[0]} must be a number"))
    eid = b.new_id()
    stored = {**copy.deepcopy(evaluation), "name": f"{record['name']}/evaluations/{eid}", "createTime": now()}
    _table(b, mid)[eid] = {"versionId": record["versionId"], "evaluation": stored}
    return copy.deepcopy(stored)


def list_evaluations(b: Backend, mid: str, version: str | None, full: str) -> dict[str, Any]:
    """The evaluations of one version (the default version without `@`), oldest first."""
    vid = versions.resolve(b, mid, version, full)["versionId"]
    rows = [copy.deepcopy(r["evaluation"]) for r in _table(b, mid).values() if r["versionId"] == vid]
    return {"modelEvaluations": rows}


def get_evaluation(b: Backend, mid: str, eid: str, full: str) -> dict[str, Any]:
    versions.versions_of(b, mid, full)
    row = _table(b, mid).get(eid)
    if row is None:
        raise ApiError(404, f"ModelEvaluation {full} is not found.")
    return copy.deepcopy(row["evaluation"])
