"""Model Registry versions through the real Vertex SDK against the stand-in: parent model, @version and @alias names,
listVersions, mergeVersionAliases, and Vertex's refusals (one alias on two versions, deleting the default version)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions

from flant5_lib.config import load_params
from flant5_lib.pipeline import registry
from flant5_lib.vertex.localstack import LocalStack
from tests.helpers.vertex import fast_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with fast_stack(tmp_path_factory.mktemp("versions")) as s:
        yield s


def test_versions_of_one_model_and_the_default_alias(stack: LocalStack) -> None:
    from google.cloud import aiplatform

    params = load_params(None, {**stack.params_overrides(), "model_display_name": "versioned"})
    uri = f"{stack.bucket}/models/m"
    first = registry.register_version(params, uri, None, default=True, aliases=())
    assert first.version_id == "1" and "default" in first.version_aliases
    second = registry.register_version(params, uri, first.resource_name, default=False)
    assert second.resource_name == first.resource_name and second.version_id == "2"
    assert second.version_aliases == ["candidate"]
    assert registry.incumbent(params).version_id == "1"  # the default version still serves

    with pytest.raises(exceptions.BadRequest, match="already used by version 2"):  # one alias, one version
        aiplatform.models.ModelRegistry(first.resource_name).add_version_aliases(["candidate"], version="1")

    by_alias = aiplatform.Model(f"{first.resource_name}@candidate")
    assert by_alias.version_id == "2"
    promoted = registry.promote(params, first.resource_name, "2")
    assert promoted.version_id == "2" and promoted.version_aliases == ["default"]
    assert registry.incumbent(params).version_id == "2"
    assert [(v["version_id"], v["aliases"]) for v in registry.versions(params, first.resource_name)] == [
        ("1", []), ("2", ["default"])]

    reg = aiplatform.models.ModelRegistry(first.resource_name)
    with pytest.raises(exceptions.GoogleAPICallError, match="default version and cannot be deleted"):
        reg.delete_version("2")
    rolled = registry.promote(params, first.resource_name, "1")  # rollback: one call
    assert rolled.version_id == "1" and registry.incumbent(params).version_id == "1"
    reg.delete_version("2")
    assert [v["version_id"] for v in registry.versions(params, first.resource_name)] == ["1"]


# a short release (3 steps of the tiny model, 8 test examples), as tests/pipeline/test_pipeline.py runs it locally
FAST = ("dataset=synthetic:64", "max_steps=3", "eval_strategy=no", "max_eval_samples=8", "bootstrap_samples=50",
        "max_new_tokens=8", "model_display_name=submitted")


@pytest.mark.slow  # a whole release in the stand-in's pipeline worker: about a minute
def test_the_release_pipeline_submitted_as_a_pipeline_job_runs_to_its_end(stack: LocalStack, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`flant5 pipeline run` without --local submits aiplatform.PipelineJob; the stand-in runs the compiled spec."""
    from flant5_lib.cli import main

    state = str(stack.write_state(tmp_path / "state.json"))
    work = tmp_path / "release"
    code = main(["pipeline", "run", "--params", "params/local-smoke.yaml", "--local-stack", state, "--no-deploy",
                 *[a for kv in FAST for a in ("--set", kv)], "--work-dir", str(work), "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PIPELINE_STATE_SUCCEEDED" in out and f"{work}: released" in out
    tasks = dict(line.split() for line in out.splitlines() if line.startswith("  ") and line.split()[-1].isupper()
                 and len(line.split()) == 2)
    assert tasks["preflight-op"] == tasks["register-op"] == tasks["promote-op"] == tasks["finish-op"] == "SUCCEEDED"
    assert "NOT_TRIGGERED" in tasks.values() and "stopped-op" not in tasks  # the gate-stopped branch did not run
    (req,) = stack.requests("/pipelineJobs", method="POST")
    assert req["body"]["runtimeConfig"]["gcsOutputDirectory"].startswith(f"{stack.bucket}/pipeline_root")
    params = load_params(None, {**stack.params_overrides(), "model_display_name": "submitted"})
    assert registry.incumbent(params).version_id == "1"


def test_an_evaluation_imported_onto_one_version(stack: LocalStack) -> None:
    """ModelEvaluation with the summarization schema on version 2 only; refusals name the field, as Vertex's do."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform.compat.types import model_evaluation as gca_me

    params = load_params(None, {**stack.params_overrides(), "model_display_name": "evaluated"})
    uri = f"{stack.bucket}/models/m"
    first = registry.register_version(params, uri, None, default=True, aliases=())
    second = registry.register_version(params, uri, first.resource_name, default=False)
    metrics = {"rouge1": 41.5, "rouge2": 18.0, "rougeL": 33.25, "rougeLsum": 37.5, "n": 8}
    ev = registry.import_evaluation(params, f"{second.resource_name}@2", metrics, "rouge-test")
    assert ev.metrics["rougeLSum"] == 0.375 and ev._gca_resource.metadata["rouge1"] == 41.5
    assert ev.resource_name.startswith(f"{first.resource_name}/evaluations/")
    assert aiplatform.Model(first.resource_name, version="1").list_model_evaluations() == []
    got = aiplatform.Model(first.resource_name, version="2").get_model_evaluation()
    assert got.resource_name == ev.resource_name and got.display_name == "rouge-test"

    client = aiplatform.Model(first.resource_name, version="2").api_client
    for bad, message in ((dict(metrics_schema_uri="gs://x/y.yaml", metrics={"rougeLSum": 0.3}), "metricsSchemaUri"),
                         (dict(metrics_schema_uri=registry.SUMMARIZATION_SCHEMA, metrics={"rouge1": 0.3}),
                          "unknown field 'rouge1'")):
        with pytest.raises(exceptions.BadRequest, match=message):
            client.import_model_evaluation(parent=f"{first.resource_name}@2",
                                           model_evaluation=gca_me.ModelEvaluation(**bad))
    with pytest.raises(exceptions.NotFound):
        client.import_model_evaluation(parent=f"{first.resource_name}@9", model_evaluation=gca_me.ModelEvaluation(
            metrics_schema_uri=registry.SUMMARIZATION_SCHEMA, metrics={"rougeLSum": 0.3}))
