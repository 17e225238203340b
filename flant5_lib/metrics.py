"""ROUGE for dialogue summaries, offline: rouge_score with stemming, our own sentence splitter for Lsum.

Scores are F1 x 100 averaged over examples (the convention of the SAMSum paper and the Hugging Face
summarisation example). ROUGE-Lsum needs sentences on separate lines; the usual recipe calls nltk's
punkt model, which cannot be downloaded here, so `split_sentences` is a careful regex splitter and
rouge_score is fed the newline-joined sentences (it splits on '\\n' itself; `split_summaries` stays off).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# SAMSum paper's buckets by number of utterances.
BUCKETS = ("3-6", "7-12", "13-18", "19-30")
BUCKET_RULE = (
    "utterances = non-empty lines (data.split_turns); buckets 3-6, 7-12, 13-18, 19-30; "
    "dialogues under 3 utterances count in 3-6 and over 30 in 19-30 (clamped to the nearest bucket)"
)
SENTENCE_SPLITTER = "flant5_lib.metrics.split_sentences (regex; nltk punkt is not used)"

# Words that end in '.' without ending a sentence when a capitalised word follows (lower-cased, no dots).
# "etc", "a.m." and "p.m." are left out on purpose: in chat summaries they mostly do end a sentence.
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr mt vs eg ie cf approx".split())
# Only abbreviations before a number ("No. 5"); elsewhere "no." ends a sentence ("Tom says no. He...").
_NUMBER_ABBREVIATIONS = frozenset("no nr".split())
# Candidate boundary: end punctuation (optionally closing quotes/brackets), whitespace, then what starts a sentence.
_BOUNDARY = re.compile(r"([.!?]+[\"'\u2019\u201d)\]]*)(\s+)(?=[\"'\u2018\u201c(\[]?[A-Z0-9\u00C0-\u00DE])")
_WORD_BEFORE = re.compile(r"(\S+)$")


def _is_abbreviation(before: str, punct: str, after: str) -> bool:
    """True when the '.' closing `before` marks an abbreviation or an initial rather than a sentence end."""
    if not punct.startswith(".") or len(punct.rstrip("\"'\u2019\u201d)]")) != 1:
        return False  # '!', '?', '...' always end a sentence
    m = _WORD_BEFORE.search(before)
    if not m:
        return False
    word = m.group(1).lstrip("\"'(\u201c\u2018[")
    bare = word.replace(".", "").lower()
    if bare in _ABBREVIATIONS:
        return True
    if bare in _NUMBER_ABBREVIATIONS:
        return after[:1].isdigit()
    # An initial ("J. K. Rowling"); "I" and "A" are far more often a pronoun or an article than an initial.
    return re.fullmatch(r"[B-HJ-Z]", word) is not None


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: existing line breaks, then '.', '!' or '?' followed by a space and a capital or digit.

    Abbreviations (Mr., Dr., e.g., i.e., vs. ...) and single-letter initials do not end a sentence;
    decimals and times ("3.5", "5.30") never match because no space follows the dot.
    """
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = line.strip()
        if not line:
            continue
        start = 0
        for m in _BOUNDARY.finditer(line):
            if _is_abbreviation(line[start : m.start(1)], m.group(1), line[m.end(2) :]):
                continue
            sentence = line[start : m.end(1)].strip()
            if sentence:
                out.append(sentence)
            start = m.end(2)
        tail = line[start:].strip()
        if tail:
            out.append(tail)
    return out


def lsum_text(text: str) -> str:
    """The form ROUGE-Lsum expects: one sentence per line."""
    return "\n".join(split_sentences(text))


def make_scorer() -> Any:
    import logging

    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs "Using default tokenizer." on every scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True, split_summaries=False)


def per_example_rouge(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """F1 x 100 of each prediction against its reference, for every ROUGE variant.

    rouge1/2/L tokenise on non-alphanumerics, so the newline-joined sentences give them the same
    tokens as the raw text; only Lsum sees the line breaks.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scorer = make_scorer()
    rows = []
    for pred, ref in zip(predictions, references):
        s = scorer.score(lsum_text(ref), lsum_text(pred))  # rouge_score's order: (target, prediction)
        rows.append({k: 100.0 * s[k].fmeasure for k in ROUGE_KEYS})
    return rows


def mean_scores(per_example: Sequence[Mapping[str, float]]) -> dict[str, float]:
    import numpy as np

    if not per_example:
        return {k: 0.0 for k in ROUGE_KEYS}
    return {k: float(np.mean([r[k] for r in per_example])) for k in ROUGE_KEYS}


def compute_rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F1 x 100 for rouge1, rouge2, rougeL and rougeLsum."""
    return mean_scores(per_example_rouge(predictions, references))


def bootstrap_ci(
    values: Sequence[float], *, samples: int = 1000, seed: int = 42, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: how much the score would move on another test set this size."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (0.0, 0.0)
    if arr.size == 1:
        return (float(arr[0]), float(arr[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // arr.size)  # bound memory for large n
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, arr.size, size=(stop - start, arr.size))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    mean = float(arr.mean())
    # Guard against float noise putting the mean a hair outside a degenerate interval.
    return (float(min(lo, mean)), float(max(hi, mean)))


_WORD = re.compile(r"\w+(?:'\w+)?")
# A loop is a block of words repeated back to back: one word three times in a row ("Paris Paris Paris"; twice is
# normal English, "very very"), or a block of two or more words twice in a row ("will meet at will meet at",
# a whole sentence said again). Repeats far apart ("Tom ... Tom ...") are not loops.
LOOP_RULE = "a word 3 times in a row, or a block of 2+ words twice in a row (lower-cased words, punctuation ignored)"


def repetition_loop(text: str) -> str | None:
    """The first looping block in `text` (as in LOOP_RULE), or None: greedy decoding's typical failure."""
    words = _WORD.findall(text.lower())
    n_words = len(words)
    for start in range(n_words):
        for size in range(1, (n_words - start) // 2 + 1):
            if words[start + size] != words[start]:  # cheap test first: keeps this ~O(n^2) on long outputs
                continue
            block = words[start : start + size]
            if words[start + size : start + 2 * size] != block:
                continue
            if size > 1 or words[start + 2 : start + 3] == block:
                return " ".join(block)
    return None


def repetition_share(texts: Sequence[str]) -> float:
    """Share of texts with a repetition loop (0..1): the metrics.json field `repetition_share`."""
    return sum(repetition_loop(t) is not None for t in texts) / len(texts) if texts else 0.0


def size_bucket(n_turns: int) -> str:
    """SAMSum's size bucket for a dialogue with `n_turns` utterances (out-of-range counts are clamped)."""
    for bucket in BUCKETS[:-1]:
        if n_turns <= int(bucket.split("-")[1]):
            return bucket
    return BUCKETS[-1]


def summarize_scores(
    per_example: Sequence[Mapping[str, float]],
    n_turns: Sequence[int] | None = None,
    *,
    samples: int = 1000,
    seed: int = 42,
) -> dict[str, Any]:
    """Means, 95% intervals and (with `n_turns`) per-bucket means: the ROUGE part of metrics.json."""
    out: dict[str, Any] = {**mean_scores(per_example), "n": len(per_example)}
    out["ci"] = {
        k: list(bootstrap_ci([r[k] for r in per_example], samples=samples, seed=seed)) for k in ROUGE_KEYS
    }
    if n_turns is not None:
        if len(n_turns) != len(per_example):
            raise ValueError(f"{len(n_turns)} turn counts but {len(per_example)} scores")
        buckets: dict[str, Any] = {}
        for b in BUCKETS:
            rows = [r for r, t in zip(per_example, n_turns) if size_bucket(t) == b]
            buckets[b] = {"n": len(rows), **mean_scores(rows)}
        out["buckets"] = buckets
    return out
