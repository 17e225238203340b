"""`flant5 compare` on real SAMSum test records scored with the real rouge_score: Lead-3 against Longest-3.

The two baselines need no model, and they are strongly correlated (both copy utterances of the same dialogue), which is
where pairing matters. Reference values below are computed here with plain numpy from predictions.jsonl, not with the
code under test.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from flant5_lib.cli import main

KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@pytest.fixture(scope="module")
def baselines(samsum_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """eval/lead3 and eval/longest3 of the 819 real test dialogues, as `flant5 baseline` writes them."""
    from flant5_lib.config import load_params
    from flant5_lib.evaluate import run_baseline

    run = tmp_path_factory.mktemp("baselines")
    params = load_params(None, {"dataset": str(samsum_dir / "original"), "run_dir": str(run), "bootstrap_samples": 200})
    for method in ("lead3", "longest3"):
        run_baseline(params, method, split="test")
    return {m: run / "eval" / m for m in ("lead3", "longest3")}


def rows(eval_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]


def run_compare(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_a_system_against_itself_differs_by_exactly_zero_with_p_one(baselines, tmp_path, capsys):
    code, out, _ = run_compare(capsys, baselines["lead3"], baselines["lead3"], "--out", tmp_path / "c", "--samples", 200,
                               "--permutations", 500)
    assert code == 0, out
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    pair = result["pairs"][0]
    assert result["n"] == 819
    for k in KEYS:
        m = pair["metrics"][k]
        assert m["diff"] == 0.0 and m["ci"] == [0.0, 0.0] and m["p_value"] == 1.0
        assert m["b_wins_share"] == 0.0 and m["tie_share"] == 1.0
        assert m["unpaired_ci"][0] < 0 < m["unpaired_ci"][1]  # independent resamples do not see that they are equal
    assert pair["disagreements"] == {"b_better": [], "a_better": []}
    assert "no significant difference" in out
    page = (tmp_path / "c" / "compare.html").read_text()
    assert "lead3 #1" in page and "lead3 #2" in page and "<style>" in page  # two labels for one system, the run page's CSS


def test_paired_interval_is_narrower_than_unpaired_for_correlated_systems(baselines, tmp_path, capsys):
    code, out, _ = run_compare(capsys, baselines["lead3"], baselines["longest3"], "--out", tmp_path / "c")
    assert code == 0
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    a = np.array([[r[k] for k in KEYS] for r in rows(baselines["lead3"])])
    by_id = {r["id"]: r for r in rows(baselines["longest3"])}
    b = np.array([[by_id[r["id"]][k] for k in KEYS] for r in rows(baselines["lead3"])])
    assert np.corrcoef(a[:, 2], b[:, 2])[0, 1] > 0.5  # the premise: the two systems find the same dialogues hard
    # The unpaired interval, computed here: each system resampled on its own.
    rng = np.random.default_rng(7)
    n = len(a)
    unpaired = np.array([b[rng.integers(0, n, n)].mean(0) - a[rng.integers(0, n, n)].mean(0) for _ in range(1000)])
    lo, hi = np.quantile(unpaired, [0.025, 0.975], axis=0)
    pair = result["pairs"][0]
    for j, k in enumerate(KEYS):
        m = pair["metrics"][k]
        assert m["diff"] == pytest.approx(b[:, j].mean() - a[:, j].mean(), abs=1e-9)
        paired_width = m["ci"][1] - m["ci"][0]
        assert m["ci"][0] <= m["diff"] <= m["ci"][1]
        assert paired_width < 0.8 * (hi[j] - lo[j]), k
        assert paired_width < m["unpaired_ci"][1] - m["unpaired_ci"][0]
    # ROUGE-2: Longest-3 wins in (nearly) every resample and the sign-flip test agrees; ROUGE-L: a coin toss
    assert pair["metrics"]["rouge2"]["b_wins_share"] > 0.99 and pair["metrics"]["rouge2"]["p_value"] < 0.01
    assert 0.2 < pair["metrics"]["rougeL"]["b_wins_share"] < 0.8 and pair["metrics"]["rougeL"]["p_value"] > 0.2
    # the buckets partition the examples, and their differences average back to the overall one
    buckets = {k: v for k, v in pair["buckets"].items() if v["n"]}
    assert sum(v["n"] for v in buckets.values()) == 819
    weighted = sum(v["n"] * v["rougeL"]["diff"] for v in buckets.values()) / 819
    assert weighted == pytest.approx(pair["metrics"]["rougeL"]["diff"], abs=1e-9)
    # the most-disagreeing example is the one with the largest ROUGE-L gain, computed here
    top = pair["disagreements"]["b_better"][0]
    gaps = b[:, 2] - a[:, 2]
    assert top["diff"] == pytest.approx(gaps.max(), abs=1e-3) and top["prediction_b"] == by_id[top["id"]]["prediction"]
    assert pair["disagreements"]["a_better"][0]["diff"] == pytest.approx(gaps.min(), abs=1e-3)
    assert "ROUGE-2" in out and "B wins" in out


def test_mismatched_example_ids_stop_with_one_line_naming_the_file(baselines, tmp_path, capsys):
    other = tmp_path / "longest3-cut"
    shutil.copytree(baselines["longest3"], other)
    kept = rows(other)[5:]  # 5 missing ...
    kept[0]["id"], kept[1]["id"] = "not-in-samsum-1", "not-in-samsum-2"  # ... and 2 that the baseline lacks
    (other / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    code, _, err = run_compare(capsys, baselines["lead3"], other, "--out", tmp_path / "c")
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"{other / 'predictions.jsonl'}: 9 example ids differ" in err and "7 of its 819 missing, 2 extra" in err
    assert not (tmp_path / "c").exists()


def test_a_missing_predictions_file_is_one_line(baselines, tmp_path, capsys):
    code, _, err = run_compare(capsys, baselines["lead3"], tmp_path / "no-such-run")
    assert code == 2 and len(err.splitlines()) == 1 and "no-such-run: not found" in err
    (tmp_path / "empty-run").mkdir()
    code, _, err = run_compare(capsys, tmp_path / "empty-run", baselines["lead3"])
    assert code == 2 and len(err.splitlines()) == 1 and "empty-run: no predictions.jsonl" in err
    code, _, err = run_compare(capsys, baselines["lead3"])
    assert code == 2 and "at least two systems" in err


def test_run_folders_name_the_systems_and_diff_their_params(baselines, tmp_path, capsys):
    runs = {}
    for name, method, lr in (("run-a", "lead3", 1e-4), ("run-b", "longest3", 3e-4)):
        run = tmp_path / name
        shutil.copytree(baselines[method], run / "eval" / "finetuned")
        (run / "params.yaml").write_text(yaml.safe_dump({"run_dir": str(run), "learning_rate": lr, "seed": 42}))
        runs[name] = run
    code, out, _ = run_compare(capsys, runs["run-a"], runs["run-b"], "--out", tmp_path / "c", "--samples", 100)
    assert code == 0
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert list(result["systems"]) == ["run-a", "run-b"]
    assert result["pairs"][0]["params_diff"] == {"learning_rate": [1e-4, 3e-4]}  # run_dir always differs: left out
    assert "learning_rate" in (tmp_path / "c" / "compare.html").read_text()


def test_predictions_without_scores_are_scored_with_rouge_score(baselines, tmp_path, capsys):
    """A predictions.jsonl made elsewhere (id, prediction, reference only) gets the same per-example ROUGE."""
    bare = tmp_path / "bare.jsonl"
    full = rows(baselines["longest3"])[:120]
    bare.write_text("".join(json.dumps({k: r[k] for k in ("id", "prediction", "reference")}) + "\n" for r in full))
    head = tmp_path / "lead3-head.jsonl"
    head.write_text("".join(json.dumps(r) + "\n" for r in rows(baselines["lead3"])[:120]))
    code, _, err = run_compare(capsys, bare, head, "--out", tmp_path / "c", "--samples", 100)
    assert code == 0, err
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    means = {k: float(np.mean([r[k] for r in full])) for k in KEYS}
    for k in KEYS:
        assert result["pairs"][0]["metrics"][k]["a"] == pytest.approx(means[k], abs=1e-3)
    assert result["pairs"][0]["buckets"] is None  # the baseline has no dialogues, so no utterance counts: no buckets


def test_a_constant_gain_has_a_degenerate_interval_and_the_smallest_p():
    """B = A + 1 on every example: every resample shows +1, and only flipping no sign (or all) reaches it."""
    from flant5_lib.compare import paired_bootstrap, sign_flip_pvalue

    a = np.random.default_rng(0).uniform(10, 60, size=(300, 4))
    boot = paired_bootstrap(a, a + 1.0, samples=300)
    assert boot["diff"] == pytest.approx([1.0] * 4) and np.allclose(boot["ci"], 1.0) and boot["b_wins_share"] == [1.0] * 4
    assert sign_flip_pvalue(np.ones((300, 4)), permutations=999) == [0.001] * 4


def test_gcs_inputs_through_the_emulator(baselines, gcs_emulator, tmp_path, capsys):
    from flant5_lib import storage

    bucket = f"gs://compare-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(bucket)
    storage.upload_dir(baselines["lead3"].parent.parent, f"{bucket}/runs/vertex-run")  # a whole run folder
    (tmp_path / "run" / "eval").mkdir(parents=True)
    shutil.copytree(baselines["longest3"], tmp_path / "run" / "eval" / "longest3")
    code, out, err = run_compare(capsys, f"{bucket}/runs/vertex-run/eval/lead3", tmp_path / "run", "--out",
                                 tmp_path / "c", "--samples", 100, "--permutations", 200)
    assert code == 0, err
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert result["systems"]["lead3"]["predictions"] == f"{bucket}/runs/vertex-run/eval/lead3/predictions.jsonl"
    assert result["systems"]["lead3"]["split"] == "test"  # its metrics.json was read from the bucket too
    assert list(result["systems"]) == ["lead3", "run"] and result["n"] == 819
    # a gs:// run folder holding two systems and no 'finetuned' must be named more precisely
    code, _, err = run_compare(capsys, f"{bucket}/runs/vertex-run", tmp_path / "run")
    assert code == 2 and "several systems" in err and "lead3, longest3" in err
