"""Lead-3 and Longest-3: unit cases, then the real SAMSum test split against a direct rouge_score computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer

from flant5_lib.baselines import lead3, longest3
from flant5_lib.config import build_params
from flant5_lib.errors import UserError
from flant5_lib.evaluate import run_baseline
from flant5_lib.metrics import split_sentences

DIALOGUE = "Ann: Hi\r\n\r\nBob: Hello there, how are you doing today?\nAnn: Fine\n  \nBob: Great to hear that from you\nAnn: Bye now, see you later\n"


def test_lead3_takes_first_three_nonempty_utterances_whole() -> None:
    assert lead3(DIALOGUE) == "Ann: Hi\nBob: Hello there, how are you doing today?\nAnn: Fine"
    assert lead3("Ann: only one") == "Ann: only one"


def test_longest3_keeps_dialogue_order() -> None:
    assert longest3(DIALOGUE) == (
        "Bob: Hello there, how are you doing today?\nBob: Great to hear that from you\nAnn: Bye now, see you later"
    )
    # Ties (equal word counts) go to the earlier utterance.
    assert longest3("A: x y\nB: z w\nC: u v\nD: s t") == "A: x y\nB: z w\nC: u v"
    assert longest3("A: one\nB: two") == "A: one\nB: two"


def test_unknown_method_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="lead3, longest3"):
        run_baseline(build_params({"dataset": "synthetic:20"}), "lead5", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _direct_rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Independent of flant5_lib.metrics except for the sentence splitter (tested in test_metrics)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [
        scorer.score("\n".join(split_sentences(r)), "\n".join(sum((split_sentences(line) for line in p.split("\n")), [])))
        for p, r in zip(predictions, references)
    ]
    return {k: 100 * float(np.mean([s[k].fmeasure for s in scores])) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}


def _own_lead3(dialogue: str) -> str:
    lines = [ln.strip() for ln in dialogue.replace("\r", "\n").split("\n")]
    return "\n".join([ln for ln in lines if ln][:3])


def _own_longest3(dialogue: str) -> str:
    lines = [ln.strip() for ln in dialogue.replace("\r", "\n").split("\n") if ln.strip()]
    ranked = sorted(enumerate(lines), key=lambda p: (-len(p[1].split()), p[0]))[:3]
    return "\n".join(line for _, line in sorted(ranked))


@pytest.mark.parametrize("method, own", [("lead3", _own_lead3), ("longest3", _own_longest3)])
def test_real_samsum_test_split_matches_direct_rouge(samsum_dir: Path, tmp_path: Path, method: str, own) -> None:
    rows = json.loads((samsum_dir / "original" / "test.json").read_text(encoding="utf-8"))
    params = build_params({"dataset": str(samsum_dir / "original"), "bootstrap_samples": 200})
    result = run_baseline(params, method, split="test", out_dir=tmp_path / method)
    expected = _direct_rouge([own(r["dialogue"]) for r in rows], [r["summary"].strip() for r in rows])
    assert result["n"] == len(rows) == 819
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-6), key
    # Published SAMSum test figures (Gliwa et al. 2019): Lead-3 R1 31.4, Longest-3 R1 32.5; same ballpark here.
    assert 29.0 < result["rouge1"] < 35.0
    assert 7.0 < result["rouge2"] < 12.0
    preds = [json.loads(line) for line in (tmp_path / method / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    assert result["gen_len_unit"] == "words"


def test_csv_mirror_gives_the_same_lead3(samsum_dir: Path, tmp_path: Path) -> None:
    original = run_baseline(build_params({"dataset": str(samsum_dir / "original"), "bootstrap_samples": 50}),
                            "lead3", split="validation", out_dir=tmp_path / "a")
    mirror = run_baseline(build_params({"dataset": str(samsum_dir / "csv"), "bootstrap_samples": 50}),
                          "lead3", split="validation", out_dir=tmp_path / "b")
    assert original["n"] == mirror["n"] == 818
    assert original["rouge1"] == pytest.approx(mirror["rouge1"], abs=1e-9)
