"""The release's serving moves, offline with the real kfp.local, the real Vertex SDK and the stand-in's real
prediction servers: a canary share first, smoke predictions the canary itself answered and a batch job, then 100%;
a smoke test failing after the canary deploy leaves the incumbent with all the traffic (the exit handler)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flant5_lib.config import load_params
from flant5_lib.pipeline import registry, runner


def _endpoint(p):  # type: ignore[no-untyped-def]
    from flant5_lib.vertex.jobs import find_endpoints

    (endpoint,) = find_endpoints(p)
    return endpoint


@pytest.mark.slow
def test_canary_then_full_traffic_and_a_failed_smoke_restores_serving(tmp_path: Path) -> None:
    from tests.helpers.vertex import fast_stack

    with fast_stack(tmp_path / "stack") as stack:
        p = load_params(None, {**stack.params_overrides(), "dataset": "synthetic:64", "model_name": "tiny",
                               "max_steps": 3, "eval_strategy": "no", "max_eval_samples": 8, "bootstrap_samples": 50,
                               "max_new_tokens": 8, "model_display_name": "release-serving",
                               "endpoint_display_name": "release-serving", "run_dir": str(tmp_path / "run"),
                               "gate_tolerance": 100, "canary_traffic_percent": 25, "smoke_predictions": 2,
                               "smoke_min_summary_chars": 0, "batch_smoke_examples": 2})
        first = runner.run_local(p, tmp_path / "r1")  # an empty endpoint: the first version gets 100% at once
        assert first["outcome"] == "released", first
        model = first["steps"]["register"]["model"].split("@")[0]
        (d1,) = [d.id for d in _endpoint(p).list_models()]
        assert first["steps"]["canary"]["share"] == 100 and _endpoint(p).traffic_split == {d1: 100}
        assert first["steps"]["smoke"]["batch"]["predictions"] == 2
        assert "# Release run: released" in (tmp_path / "r1" / "release.md").read_text()

        # the canary is deployed, then its smoke summaries are too short: the run fails, the exit handler restores
        failed = runner.run_local(p.with_overrides(smoke_min_summary_chars=10_000), tmp_path / "r2")
        assert failed["outcome"] == "failed, serving restored", failed
        canary = failed["steps"]["canary"]
        assert canary["share"] == 25 and canary["deployed_model_id"] != d1
        assert "smoke" not in failed["steps"] and "promote" not in failed["steps"]
        assert failed["steps"]["restored"]["serving"]["undeployed"] == [canary["deployed_model_id"]]
        assert _endpoint(p).traffic_split == {d1: 100} and [d.id for d in _endpoint(p).list_models()] == [d1]
        assert registry.incumbent(p).version_id == "1"  # version 2 is listed, never became the default
        assert [(v["version_id"], v["aliases"]) for v in registry.versions(p, model)] == [("1", ["default"]), ("2", [])]
        page = (tmp_path / "r2" / "release.md").read_text()
        assert "failed, serving restored" in page and "FAILED" in page and "smoke_min_summary_chars" in page
        assert failed["steps"]["failure"]["step"] == "smoke"
        (deploy_req,) = [r for r in stack.requests(":deployModel", method="POST")][1:2]
        assert deploy_req["body"]["trafficSplit"] == {"0": 25, d1: 75}

        passed = runner.run_local(p, tmp_path / "r3")
        assert passed["outcome"] == "released", passed
        d3 = passed["steps"]["canary"]["deployed_model_id"]
        online = passed["steps"]["smoke"]["online"]
        assert online["canary_answers"] == 2 and online["calls"] > 2  # the incumbent answered its 75% meanwhile
        assert passed["steps"]["promote"]["traffic_split"] == {d3: 100, d1: 0}
        assert passed["steps"]["promote"]["undeployed"] == [d1]
        assert _endpoint(p).traffic_split == {d3: 100} and [d.id for d in _endpoint(p).list_models()] == [d3]
        assert [(v["version_id"], v["aliases"]) for v in registry.versions(p, model)] == [
            ("1", []), ("2", []), ("3", ["default"])]
