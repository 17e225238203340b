"""Workbench test helpers: a run folder as notebook 03 leaves it, for the run-page tests."""

from __future__ import annotations

import json
from pathlib import Path

from flant5_lib.workbench.report import write_index


def small_run(run_dir: Path, n: int = 40) -> dict[str, str]:
    """A run folder as notebook 03 leaves it: scores from 100 down to a repetition loop, and a failed notebook."""
    rows = []
    for i in range(n):
        score = round(100 - i * 97 / (n - 1), 1)
        rows.append({"id": f"dlg-{i:03d}", "dialogue": f"Anna: line one of {i}\nBob: line two", "reference": f"Summary {i}.",
                     "prediction": f"Summary {i}." if i < n - 1 else "Anna will call Bob. Bob Bob Bob Bob Bob",
                     "n_turns": 2 + i % 20, "bucket": "3-6", "rouge1": score, "rouge2": score / 2, "rougeL": score,
                     "rougeLsum": score, "repetition": None if i < n - 1 else "bob", "capped": i == n - 1})
    ev = run_dir / "eval" / "finetuned"
    ev.mkdir(parents=True)
    (ev / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mean = sum(r["rougeL"] for r in rows) / n
    (ev / "metrics.json").write_text(json.dumps({
        "name": "finetuned", "dataset": "synthetic:200", "split": "test", "n": n, "gen_len": 9.0,
        "gen_len_unit": "tokens of the model's tokenizer", "gen_words": 7.5, "capped_share": 1 / n,
        "repetition_share": 1 / n, "params": {"max_new_tokens": 64},
        **{k: mean for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
        "ci": {k: [mean - 5, mean + 5] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
    }))
    info = {"status": "failed", "started_at": "2026-01-01T00:00:00+00:00", "seconds": 12.5, "notebooks": [
        {"name": "03_evaluate", "status": "failed", "seconds": 3.2, "output": str(run_dir / "notebooks" / "03.ipynb"),
         "error": "03_evaluate.ipynb: cell 5 [finetuned = evaluate_model(params, model_dir, name=...] failed: " + "x" * 300},
        {"name": "04_deploy", "status": "pending", "seconds": None, "output": str(run_dir / "notebooks" / "04.ipynb")}]}
    write_index(run_dir, info)
    return {"best": rows[0]["id"], "worst": rows[-1]["id"]}
