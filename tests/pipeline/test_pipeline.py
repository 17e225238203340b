"""The release pipeline: its compiled spec, the gate's rule, bad input, and offline runs with the real kfp.local
and the real Vertex SDK against the stand-in through both branches of the gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flant5_lib.cli import main
from flant5_lib.config import load_params
from flant5_lib.pipeline import gate, graph, registry, runner

CLOUD = {"gcp_project": "my-project", "gcp_region": "us-central1", "staging_bucket": "gs://my-bucket"}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compile_writes_a_spec_pipelinejob_accepts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    out = tmp_path / "release.yaml"
    sets = [a for k, v in CLOUD.items() for a in ("--set", f"{k}={v}")]
    code, printed, _ = _cli(capsys, "pipeline", "compile", "--params", "params/local-smoke.yaml", *sets,
                            "--out", str(out))
    assert code == 0 and printed.strip() == str(out)
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "flan-t5-samsum-release"
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {
        "us-central1-docker.pkg.dev/my-project/flant5/flant5-train:latest"}
    assert not any("pip install" in " ".join(e["container"].get("command", [])) for e in executors.values())
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"params_yaml", "work_dir", "deploy"}
    root = spec["root"]["dag"]["tasks"]  # the exit handler wraps every step; `finish` runs after it, whatever ends it
    assert set(root) == {"exit-handler-1", "finish-op"}
    assert root["finish-op"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"preflight-op", "train-op", "gate-op", "condition-branches-2"} <= set(tasks)
    branch = spec["components"]["comp-condition-branches-2"]["dag"]["tasks"]
    conditions = sorted(t["triggerPolicy"]["condition"] for t in branch.values())
    assert any("== 'pass'" in c for c in conditions) and any("!" in c for c in conditions)

    aiplatform.init(project="my-project", location="us-central1", credentials=AnonymousCredentials())
    job = aiplatform.PipelineJob(display_name="release", template_path=str(out), pipeline_root="gs://my-bucket/root",
                                 parameter_values={"params_yaml": "{}", "work_dir": "/gcs/my-bucket/r", "deploy": False})
    assert job._gca_resource.runtime_config.parameter_values["deploy"] is False


def test_dry_run_prints_steps_and_image(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "pipeline", "compile", "--params", "params/local-smoke.yaml", "--dry-run",
                        "--set", "train_container_uri=us-docker.pkg.dev/p/r/flant5-train:v1")
    shown = json.loads(out)
    assert code == 0 and shown["image"] == "us-docker.pkg.dev/p/r/flant5-train:v1"
    assert shown["steps"][:5] == ["preflight", "train", "evaluate-candidate", "evaluate-incumbent", "gate"]
    rows = {r["step"]: r for r in shown["cost"]["steps"]}
    assert set(rows) == set(shown["steps"]) and all(r["machine"].startswith("e2-standard-4") for r in rows.values())


def test_dry_run_prices_each_step_with_the_training_job_as_vertex_train_estimates_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The train step on Vertex costs what `flant5 vertex estimate` says, plus its launcher; evaluation scales with
    the test split."""
    from flant5_lib.config import load_params
    from flant5_lib.vertex.estimate import estimate, load_prices

    sets = ["--set", "pipeline_train_on=vertex", *[a for k, v in CLOUD.items() for a in ("--set", f"{k}={v}")]]
    code, out, err = _cli(capsys, "pipeline", "compile", "--params", "params/vertex-a100.yaml", "--dry-run", *sets)
    cost = json.loads(out)["cost"]
    rows = {r["step"]: r for r in cost["steps"]}
    params = load_params("params/vertex-a100.yaml", {"pipeline_train_on": "vertex", **CLOUD})
    job = estimate(params, load_prices())
    assert code == 0 and rows["train"]["machine"] == "e2-standard-4 + a2-highgpu-1g x 1"
    assert job["usd"] < rows["train"]["usd"] <= job["usd"] + 0.02  # the job, and 2 minutes of its launcher
    assert rows["evaluate-candidate"]["hours"] > rows["gate"]["hours"]
    assert cost["total_usd"] == pytest.approx(sum(r["usd"] for r in rows.values()))
    assert "train" in err and "total" in err  # the table a person reads


@pytest.mark.parametrize("argv, field", [
    (["compile", "--set", "gate_min_rouge1=150"], "gate_min_rouge1"),
    (["compile", "--set", "gate_tolerance=-1"], "gate_tolerance"),
    (["run", "--set", "pipeline_root=/tmp/root"], "pipeline_root"),
    (["run", "--local", "--set", "canary_traffic_percent=150"], "canary_traffic_percent"),
    (["compile", "--set", "canary_traffic_percent=-5"], "canary_traffic_percent"),
    (["run", "--local", "--set", "gate_against=incumbent"], "gate_against"),  # a fresh stand-in has no default version
    (["status", "--work-dir", "/nonexistent/release"], "no pipeline records"),
])
def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], field: str) -> None:
    args = argv if argv[0] == "status" else [*argv, "--params", "params/local-smoke.yaml"]
    code, _, err = _cli(capsys, "pipeline", *args)
    assert code == 2 and field in err and len(err.strip().splitlines()) == 1


def test_a_work_dir_holding_an_earlier_run_is_refused_unless_fresh(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "preflight.json").write_text("{}")
    (tmp_path / "candidate").mkdir()
    code, _, err = _cli(capsys, "pipeline", "run", "--local", "--params", "params/local-smoke.yaml",
                        "--work-dir", str(tmp_path))
    assert code == 2 and "--fresh" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in runner.earlier_run(tmp_path, fresh=True)) == ["candidate", "preflight.json"]


def _pair(lo: float, hi: float) -> dict:
    return {"metrics": {"rougeL": {"diff": (lo + hi) / 2, "ci": [lo, hi], "p_value": 0.5}}}


def test_gate_floors_and_paired_interval() -> None:
    p = load_params(None, {"gate_min_rouge1": 40, "gate_tolerance": 0.5})
    good = {"rouge1": 41.0, "rougeL": 33.0}
    assert gate.decide(p, good, _pair(-0.4, 1.0))["passed"]
    worse = gate.decide(p, good, _pair(-0.6, 1.0))  # the interval reaches past the tolerance
    assert not worse["passed"] and worse["reasons"][0].startswith("gate_tolerance:")
    low = gate.decide(p, {"rouge1": 39.99, "rougeL": 33.0}, None)
    assert low["reasons"] == ["gate_min_rouge1: candidate rouge1 39.99 is below the floor 40"]
    assert gate.decide(p, good, None)["passed"]  # no incumbent: floors only
    need = gate.decide(p.with_overrides(gate_against="incumbent"), good, None)
    assert not need["passed"] and "gate_against" in need["reasons"][0]


@pytest.mark.slow
def test_local_runs_through_both_branches_of_the_gate(tmp_path: Path) -> None:
    """First release (version 1, default), a candidate below the floor (stopped, nothing registered), then one
    that passes (version 2, default; version 1 still listed)."""
    from google.cloud import aiplatform

    from tests.helpers.vertex import fast_stack

    with fast_stack(tmp_path / "stack") as stack:
        p = load_params(None, {**stack.params_overrides(), "dataset": "synthetic:64", "model_name": "tiny",
                               "max_steps": 3, "eval_strategy": "no", "max_eval_samples": 8, "bootstrap_samples": 50,
                               "max_new_tokens": 8, "model_display_name": "release-test",
                               "run_dir": str(tmp_path / "run")})
        first = runner.run_local(p, tmp_path / "r1", deploy=False)
        assert first["outcome"] == "released"
        model, _, vid = first["steps"]["register"]["model"].partition("@")
        assert vid == "1" and first["steps"]["promote"]["aliases"] == ["default"]

        stopped = runner.run_local(p.with_overrides(gate_min_rouge1=100), tmp_path / "r2", deploy=False)
        assert stopped["outcome"] == "stopped at the gate" and "register" not in stopped["steps"]
        assert stopped["steps"]["stopped"]["reasons"][0].startswith("gate_min_rouge1: candidate rouge1")
        assert stopped["steps"]["gate"]["against"] == "incumbent"
        assert [v["version_id"] for v in registry.versions(p, model)] == ["1"]
        assert not stack.requests("models:upload", method="POST")[1:]  # only the first release uploaded

        passed = runner.run_local(p.with_overrides(gate_tolerance=100), tmp_path / "r3", deploy=False)
        assert passed["outcome"] == "released"
        assert passed["steps"]["register"]["model"] == f"{model}@2"
        assert (tmp_path / "r3" / "compare.json").is_file()
        assert [(v["version_id"], v["aliases"]) for v in registry.versions(p, model)] == [("1", []), ("2", ["default"])]
        assert registry.incumbent(p).version_id == "2"
        evaluation = passed["steps"]["evaluation"]  # the candidate's test ROUGE, on version 2 only
        assert evaluation["metrics_schema_uri"].endswith("/modelevaluation/summarization_metrics_1.0.0.yaml")
        assert [e.resource_name for e in aiplatform.Model(model, version="2").list_model_evaluations()] == \
            [evaluation["evaluation"]]
        assert evaluation["metrics"]["rougeLSum"] == pytest.approx(
            json.loads((tmp_path / "r3" / "eval" / "candidate" / "metrics.json").read_text())["rougeLsum"] / 100, abs=1e-6)


def test_the_graph_figure_is_read_from_the_compiled_spec(tmp_path: Path) -> None:
    """Every executor step once, in its group (gate branches, exit handler), with the edges the spec implies."""
    from flant5_lib.pipeline import figure

    p = load_params("params/local-smoke.yaml", CLOUD)
    spec = graph.compile_spec(p, tmp_path / "release.yaml")
    groups, edges = figure.spec_edges(yaml.safe_load(Path(spec).read_text()))
    assert {n.removesuffix("-op").replace("-", "_") for n in groups} == {s.replace("-", "_") for s in graph.STEPS}
    assert groups["stopped-op"] == "gate stopped" and groups["promote-op"] == "gate passed"
    assert groups["finish-op"] == "exit handler"
    assert {("gate-op", "register-op"), ("gate-op", "stopped-op"), ("canary-op", "smoke-op"),
            ("smoke-op", "promote-op"), ("promote-op", "finish-op"), ("stopped-op", "finish-op")} <= set(edges)
    assert ("preflight-op", "register-op") not in edges  # implied by preflight -> train -> ... -> gate -> register
    png = figure.draw(spec, tmp_path / "graph.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
