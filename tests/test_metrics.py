"""ROUGE, the offline sentence splitter, bootstrap intervals and SAMSum's size buckets."""

from __future__ import annotations

import numpy as np
import pytest
from rouge_score import rouge_scorer

from flant5_lib import metrics as M


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith is here. He left! Did he? Yes.", ["Mr. Smith is here.", "He left!", "Did he?", "Yes."]),
        ("Use a tool, e.g. Python. Then go.", ["Use a tool, e.g. Python.", "Then go."]),
        ("Dr. Who and Mrs. Hudson met. Fine.", ["Dr. Who and Mrs. Hudson met.", "Fine."]),
        ("Meet at 5.30 p.m. Tom will come.", ["Meet at 5.30 p.m.", "Tom will come."]),
        ("Tom says no. He is sad.", ["Tom says no.", "He is sad."]),
        ("Room No. 5 is free.", ["Room No. 5 is free."]),
        ("J. K. Rowling wrote it. Wow... Great", ["J. K. Rowling wrote it.", "Wow...", "Great"]),
        ("It costs 3.5 dollars. 2 people came.", ["It costs 3.5 dollars.", "2 people came."]),
        ('She said "Go home." Then left.', ['She said "Go home."', "Then left."]),
        ("ok. see you", ["ok. see you"]),  # no capital after the dot: not a boundary
        ("First line\r\n\nsecond line. Third", ["First line", "second line.", "Third"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert M.split_sentences(text) == expected


def test_rouge_matches_rouge_score_and_scales_to_100() -> None:
    preds = ["Amanda baked cookies and Jerry will get some.", "Tom is late.", "Nothing in common"]
    refs = ["Amanda baked cookies. She will bring Jerry some tomorrow.", "Tom will be late for the meeting.", "xyz"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(preds, refs)]
    got = M.compute_rouge(preds, refs)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(100 * np.mean([d[key].fmeasure for d in direct]))
    assert M.compute_rouge(refs[:2], refs[:2]) == {k: pytest.approx(100.0) for k in M.ROUGE_KEYS}
    assert M.per_example_rouge(preds, refs)[2] == {k: 0.0 for k in M.ROUGE_KEYS}


def test_rouge_lsum_uses_sentence_split() -> None:
    # Same sentences in swapped order: the summary-level LCS (Lsum) is perfect, the flat LCS (L) is not.
    got = M.compute_rouge(["Dan buys milk. Eve pays rent."], ["Eve pays rent. Dan buys milk."])
    assert got["rougeLsum"] == pytest.approx(100.0)
    assert got["rougeL"] < 70.0
    assert got["rouge1"] == pytest.approx(100.0)


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        M.compute_rouge(["a"], ["a", "b"])


def test_bootstrap_contains_mean_is_seeded_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    population = rng.uniform(0, 100, size=5000)
    small, large = population[:50], population[:2000]
    lo_s, hi_s = M.bootstrap_ci(small, samples=500, seed=1)
    lo_l, hi_l = M.bootstrap_ci(large, samples=500, seed=1)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # width ~ 1/sqrt(n): 50 -> 2000 is ~6x narrower
    assert M.bootstrap_ci(small, samples=500, seed=1) == (lo_s, hi_s)
    assert M.bootstrap_ci(small, samples=500, seed=2) != (lo_s, hi_s)
    assert M.bootstrap_ci([7.0, 7.0, 7.0], samples=100) == (7.0, 7.0)


@pytest.mark.parametrize(
    "n_turns, bucket",
    [(0, "3-6"), (1, "3-6"), (3, "3-6"), (6, "3-6"), (7, "7-12"), (12, "7-12"), (13, "13-18"), (18, "13-18"),
     (19, "19-30"), (30, "19-30"), (31, "19-30"), (200, "19-30")],
)
def test_size_bucket_boundaries_and_clamping(n_turns: int, bucket: str) -> None:
    assert M.size_bucket(n_turns) == bucket


def test_summarize_scores_buckets_add_up() -> None:
    rng = np.random.default_rng(3)
    turns = rng.integers(1, 40, size=300).tolist()
    per_example = [{k: float(rng.uniform(0, 100)) for k in M.ROUGE_KEYS} for _ in turns]
    s = M.summarize_scores(per_example, turns, samples=200, seed=0)
    assert s["n"] == 300
    assert sum(b["n"] for b in s["buckets"].values()) == 300
    assert list(s["buckets"]) == list(M.BUCKETS)
    for key in M.ROUGE_KEYS:
        lo, hi = s["ci"][key]
        assert lo <= s[key] <= hi
        weighted = sum(b["n"] * b[key] for b in s["buckets"].values()) / 300
        assert weighted == pytest.approx(s[key])


@pytest.mark.parametrize(
    "text, loop",
    [
        ("Paris Paris Paris", "paris"),
        ("Amanda will go to Paris, Paris, Paris.", "paris"),
        ("Tom will meet Ann at the station at the station.", "at the station"),
        ("Ann is late. Ann is late.", "ann is late"),
        ("It was very very good.", None),  # one word twice: ordinary English
        ("Tom will come. Tom is late, Tom says.", None),  # repeats apart from each other are not loops
        ("Ann's dog and Ann's cat", None),
        ("", None),
    ],
)
def test_repetition_loop(text: str, loop: str | None) -> None:
    assert M.repetition_loop(text) == loop


def test_repetition_share_counts_texts_with_a_loop() -> None:
    assert M.repetition_share(["a b a b", "fine summary", "x x x", "ok"]) == 0.5
    assert M.repetition_share([]) == 0.0
