"""Is B better than A? Paired comparison of systems scored on the same examples (`flant5 compare`, notebook 06).

A system is a run folder (its eval/finetuned/, or its only eval folder), an eval folder (eval/<system>/) or a
predictions.jsonl file, local or gs://. Every system is compared with the first (the baseline) on the per-example
ROUGE of predictions.jsonl:

- paired bootstrap: the same resampled examples for both systems, so what the two share (an easy dialogue is easy for
  both) cancels; 95% percentile interval of mean(B) - mean(A) and the share of resamples in which B wins. The
  unpaired interval (independent resamples) is reported beside it for contrast: for correlated systems it is wider;
- two-sided paired sign-flip permutation test of the mean difference (A against itself: difference 0, p = 1);
- differences per size bucket, the params.yaml keys that differ, and the examples the two disagree on most.

Pure numpy; a core module (the HTML page lives in workbench/compare_page.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from flant5_lib import metrics as M
from flant5_lib.errors import DataError, UserError

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
PERMUTATIONS = 10_000
SIGNIFICANCE = 0.05
_CHUNK_CELLS = 1_000_000  # resamples x examples per chunk: bounds memory (about 32 MB of float64 for 4 keys)
_NO_PREDICTIONS = "pass a run folder, an eval folder (<run>/eval/<system>/) or a predictions.jsonl file"


@dataclass
class System:
    """One side of a comparison: its per-example rows (in the baseline's id order once aligned)."""

    label: str
    source: str  # what the user passed
    predictions: str  # the predictions.jsonl it read
    rows: list[dict[str, Any]]
    metrics: dict[str, Any] | None  # metrics.json beside predictions.jsonl
    params: dict[str, Any] | None  # the run's params.yaml
    run_name: str | None = None


# --- reading (local or gs://) ---------------------------------------------------------------------------


def _is_gcs(loc: str) -> bool:
    return loc.startswith("gs://")


def _join(base: str, *parts: str) -> str:
    if _is_gcs(base):
        from flant5_lib.storage import join_gcs

        return join_gcs(base, *parts)
    return str(Path(base, *parts))


def _parent(loc: str) -> str:
    if _is_gcs(loc):
        return loc.rstrip("/").rsplit("/", 1)[0]
    return str(Path(loc).parent)


def _name(loc: str) -> str:
    return PurePosixPath(loc.rstrip("/")).name if _is_gcs(loc) else Path(loc).name


def _read_optional(loc: str) -> str | None:
    """The file's text, or None when it is not there."""
    if _is_gcs(loc):
        from flant5_lib import storage

        return storage.read_text(loc) if storage.exists(loc) else None
    p = Path(loc)
    return p.read_text(encoding="utf-8") if p.is_file() else None


def _is_file(loc: str) -> bool:
    if _is_gcs(loc):
        from flant5_lib import storage

        return storage.exists(loc)
    return Path(loc).is_file()


def _eval_systems(run: str) -> list[str]:
    """Names of <run>/eval/<name>/predictions.jsonl."""
    if _is_gcs(run):
        from flant5_lib import storage

        names = storage.list_blobs(_join(run, "eval"))
        return sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/predictions.jsonl")})
    return sorted(p.parent.name for p in Path(run, "eval").glob("*/predictions.jsonl"))


def _run_of(eval_dir: str) -> str | None:
    """The run folder holding <run>/eval/<system>/, if that is where the eval folder sits."""
    return _parent(_parent(eval_dir)) if _name(_parent(eval_dir)) == "eval" else None


def _locate(spec: str) -> tuple[str, str | None, bool]:
    """(predictions.jsonl, its run folder or None, whether `spec` named the run folder itself)."""
    loc = spec.rstrip("/") if _is_gcs(spec) else str(Path(spec).expanduser())
    if not _is_gcs(loc) and not Path(loc).exists():
        raise DataError(f"{spec}: not found; {_NO_PREDICTIONS}")
    if loc.endswith(".jsonl"):
        return loc, _run_of(_parent(loc)), False
    if _is_file(_join(loc, "predictions.jsonl")):
        return _join(loc, "predictions.jsonl"), _run_of(loc), False
    systems = _eval_systems(loc)
    if not systems:
        raise DataError(f"{spec}: no predictions.jsonl in it or in its eval/*/ folders; run `flant5 evaluate` or "
                        f"notebook 03 first, or {_NO_PREDICTIONS}")
    if "finetuned" not in systems and len(systems) > 1:
        raise DataError(f"{spec}: a run folder with several systems and no 'finetuned'; name one, e.g. "
                        f"{_join(spec, 'eval', systems[0])} (it has {', '.join(systems)})")
    name = "finetuned" if "finetuned" in systems else systems[0]
    return _join(loc, "eval", name, "predictions.jsonl"), loc, True


def _parse_rows(text: str, path: str) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {i}: not valid JSON ({err.msg})") from None
        missing = [k for k in ("id", "prediction", "reference") if k not in row]
        if missing:
            raise DataError(f"{path}: line {i}: no {', '.join(missing)} (each row needs id, prediction and reference)")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows; re-run the evaluation that wrote it")
    return rows


def _complete_rows(rows: list[dict[str, Any]]) -> None:
    """Score rows that carry no per-example ROUGE (a predictions file made elsewhere); bucket rows from the dialogue."""
    from flant5_lib.data import split_turns

    if any(k not in r for r in rows for k in M.ROUGE_KEYS):
        scores = M.per_example_rouge([r["prediction"] for r in rows], [r["reference"] for r in rows])
        for r, s in zip(rows, scores):
            r.update({k: round(s[k], 4) for k in M.ROUGE_KEYS})
    for r in rows:
        if "n_turns" not in r and r.get("dialogue"):
            r["n_turns"] = len(split_turns(r["dialogue"]))


def load_system(spec: str | os.PathLike[str]) -> System:
    """Read one system: its predictions, and the metrics.json and params.yaml beside them when there."""
    import yaml

    spec = str(spec)
    pred, run, named_run = _locate(spec)
    text = _read_optional(pred)
    if text is None:
        raise DataError(f"{pred}: not found; {_NO_PREDICTIONS}")
    rows = _parse_rows(text, pred)
    _complete_rows(rows)
    metrics_path = _join(_parent(pred), "metrics.json")
    metrics_text = _read_optional(metrics_path)
    try:
        metrics = json.loads(metrics_text) if metrics_text else None
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; ignored", metrics_path)
        metrics = None
    params_text = _read_optional(_join(run, "params.yaml")) if run else None
    params = yaml.safe_load(params_text) if params_text else None
    run_name = _name(run) if run else None
    label = run_name if named_run and run_name else _name(_parent(pred))
    return System(label, spec, pred, rows, metrics, params if isinstance(params, dict) else None, run_name)


def _unique_labels(systems: Sequence[System]) -> None:
    """Labels name systems in tables: the eval folder's (or run's) name, prefixed with the run's where two would
    clash, numbered where they still do (a system compared with itself)."""
    from collections import Counter

    clashing = [s for s in systems if sum(o.label == s.label for o in systems) > 1]
    for s in clashing:
        if s.run_name and s.run_name != s.label:
            s.label = f"{s.run_name}/{s.label}"
    counts, seen = Counter(s.label for s in systems), Counter[str]()
    for s in systems:
        if counts[s.label] > 1:
            seen[s.label] += 1
            s.label = f"{s.label} #{seen[s.label]}"


def align(systems: Sequence[System]) -> None:
    """Put every system's rows in the baseline's id order; stop when the example sets differ."""
    base = systems[0]
    for s in systems:
        ids = [r["id"] for r in s.rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{s.predictions}: id {dup!r} appears more than once; each example must be scored once")
    base_ids = [r["id"] for r in base.rows]
    base_set = set(base_ids)
    for s in systems[1:]:
        by_id = {r["id"]: r for r in s.rows}
        extra = len(set(by_id) - base_set)
        missing = len(base_set - set(by_id))
        if extra or missing:
            raise DataError(
                f"{s.predictions}: {extra + missing} example ids differ from {base.predictions} ({missing} of its "
                f"{len(base_ids)} missing, {extra} extra); score both on the same split with the same max_eval_samples")
        s.rows = [by_id[i] for i in base_ids]
        refs = sum(a["reference"] != b["reference"] for a, b in zip(base.rows, s.rows))
        if refs:
            raise DataError(f"{s.predictions}: {refs} references differ from {base.predictions} for the same ids; "
                            "score both on the same dataset")


def load_systems(specs: Sequence[str | os.PathLike[str]]) -> list[System]:
    """Read and align the systems; the first is the baseline every other is compared with."""
    if len(specs) < 2:
        raise UserError(f"compare needs at least two systems (got {len(specs)}); the first is the baseline")
    systems = [load_system(s) for s in specs]
    align(systems)
    _unique_labels(systems)
    return systems


# --- statistics ----------------------------------------------------------------------------------------------


def _matrix(system: System) -> Any:
    import numpy as np

    return np.array([[float(r[k]) for k in M.ROUGE_KEYS] for r in system.rows])


def _resample_means(values: Any, idx_source: Any, samples: int) -> Any:
    """Means of `values` (n x k) over `samples` resamples of its rows drawn from the generator `idx_source`."""
    import numpy as np

    n = values.shape[0]
    out = np.empty((samples, values.shape[1]))
    step = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, samples, step):
        stop = min(samples, start + step)
        idx = idx_source.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _interval(means: Any) -> list[list[float]]:
    import numpy as np

    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def paired_bootstrap(a: Any, b: Any, *, samples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Resample examples once and score both systems on the same resample: interval of the difference, B's win share.

    `a`, `b`: per-example scores, n x k (k metrics). Also the unpaired interval (A and B resampled independently),
    which ignores that the two systems were scored on the same examples.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    diff = b - a
    means = _resample_means(diff, rng, samples)
    unpaired = _resample_means(b, np.random.default_rng(seed + 1), samples) - _resample_means(
        a, np.random.default_rng(seed + 2), samples)
    return {
        "diff": [float(x) for x in diff.mean(axis=0)],
        "ci": _interval(means),
        "unpaired_ci": _interval(unpaired),
        "b_wins_share": [float(x) for x in (means > 0).mean(axis=0)],
        "tie_share": [float(x) for x in (means == 0).mean(axis=0)],
    }


def sign_flip_pvalue(diff: Any, *, permutations: int = PERMUTATIONS, seed: int = 42) -> list[float]:
    """Two-sided paired permutation test: under "no difference" each example's B - A is as likely negated, so count
    random sign flips whose |mean| reaches the observed one. p = (1 + count) / (1 + permutations); identical systems
    (every difference 0) give exactly 1."""
    import numpy as np

    n, k = diff.shape
    observed = np.abs(diff.mean(axis=0))
    tol = 1e-9 * np.maximum(1.0, observed)  # float noise of a different summation order is not a larger difference
    rng = np.random.default_rng(seed)
    hits = np.zeros(k)
    step = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, permutations, step):
        stop = min(permutations, start + step)
        signs = rng.integers(0, 2, size=(stop - start, n)).astype(np.float64) * 2 - 1
        hits += (np.abs(signs @ diff / n) >= observed - tol).sum(axis=0)
    return [float(x) for x in (1 + hits) / (1 + permutations)]


def _by_bucket(a: Any, b: Any, buckets: Sequence[str | None], samples: int, seed: int) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    labels = np.array([x or "" for x in buckets])
    for i, bucket in enumerate(M.BUCKETS):
        mask = labels == bucket
        n = int(mask.sum())
        if n == 0:
            out[bucket] = {"n": 0}
            continue
        boot = paired_bootstrap(a[mask], b[mask], samples=samples, seed=seed + 101 * (i + 1))
        out[bucket] = {"n": n, **{k: {"a": float(a[mask][:, j].mean()), "b": float(b[mask][:, j].mean()),
                                      "diff": boot["diff"][j], "ci": boot["ci"][j]} for j, k in enumerate(M.ROUGE_KEYS)}}
    return out


def params_diff(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, list[Any]] | None:
    """{field: [A's value, B's value]} for the params.yaml keys that differ (run_dir always does: left out)."""
    if a is None or b is None:
        return None
    keys = list(dict.fromkeys([*a, *b]))
    return {k: [a.get(k), b.get(k)] for k in keys if k != "run_dir" and a.get(k) != b.get(k)}


def _disagreements(a: System, b: System, n: int) -> dict[str, list[dict[str, Any]]]:
    """The `n` examples where B beats A by most ROUGE-L, and the `n` where A beats B by most."""
    gaps = [(float(rb["rougeL"]) - float(ra["rougeL"]), i) for i, (ra, rb) in enumerate(zip(a.rows, b.rows))]

    def row(i: int) -> dict[str, Any]:
        ra, rb = a.rows[i], b.rows[i]
        return {"id": ra["id"], "dialogue": ra.get("dialogue", ""), "reference": ra["reference"], "n_turns": ra.get("n_turns"),
                "prediction_a": ra["prediction"], "prediction_b": rb["prediction"],
                "rougeL_a": float(ra["rougeL"]), "rougeL_b": float(rb["rougeL"]),
                "diff": round(float(rb["rougeL"]) - float(ra["rougeL"]), 4)}

    ranked = sorted(gaps, key=lambda g: (-g[0], g[1]))
    return {"b_better": [row(i) for gap, i in ranked[:n] if gap > 0],
            "a_better": [row(i) for gap, i in sorted(gaps, key=lambda g: (g[0], g[1]))[:n] if gap < 0]}


def _system_summary(s: System, samples: int, seed: int) -> dict[str, Any]:
    """ROUGE means and intervals (metrics.summarize_scores, so they match the run page), lengths, quality shares."""
    rows = s.rows
    per_example = [{k: float(r[k]) for k in M.ROUGE_KEYS} for r in rows]
    turns = [r.get("n_turns") for r in rows]
    summary = M.summarize_scores(per_example, turns if all(t is not None for t in turns) else None,
                                 samples=samples, seed=seed)
    m = s.metrics or {}
    capped = [r["capped"] for r in rows if "capped" in r]
    loops = [r["repetition"] if "repetition" in r else M.repetition_loop(r["prediction"]) for r in rows]
    return {
        "source": s.source, "predictions": s.predictions, "dataset": m.get("dataset"), "split": m.get("split"),
        "model": m.get("model"), **summary,
        "gen_words": sum(len(r["prediction"].split()) for r in rows) / len(rows), "gen_len_unit": "words",
        "capped_share": sum(map(bool, capped)) / len(capped) if capped else m.get("capped_share"),
        "repetition_share": sum(x is not None for x in loops) / len(loops),
    }


def compare_systems(
    systems: Sequence[System], *, samples: int = 1000, permutations: int = PERMUTATIONS, seed: int = 42,
    n_examples: int = 5,
) -> dict[str, Any]:
    """Everything compare.json holds: each system's scores, and each system against the first (paired)."""
    t0 = time.perf_counter()
    base = systems[0]
    a = _matrix(base)
    pairs = []
    for other in systems[1:]:
        b = _matrix(other)
        boot = paired_bootstrap(a, b, samples=samples, seed=seed)
        pvals = sign_flip_pvalue(b - a, permutations=permutations, seed=seed)
        per_metric = {
            k: {"a": float(a[:, j].mean()), "b": float(b[:, j].mean()), "diff": boot["diff"][j], "ci": boot["ci"][j],
                "unpaired_ci": boot["unpaired_ci"][j], "b_wins_share": boot["b_wins_share"][j],
                "tie_share": boot["tie_share"][j], "p_value": pvals[j]}
            for j, k in enumerate(M.ROUGE_KEYS)
        }
        buckets = [M.size_bucket(int(r["n_turns"])) if r.get("n_turns") is not None else None for r in base.rows]
        pairs.append({
            "a": base.label, "b": other.label, "metrics": per_metric,
            "buckets": _by_bucket(a, b, buckets, samples, seed) if any(buckets) else None,
            "params_diff": params_diff(base.params, other.params),
            "disagreements": _disagreements(base, other, n_examples),
        })
        log.info("%s vs %s: rougeL %+.2f (95%% CI %+.2f to %+.2f), p = %.4f", other.label, base.label,
                 per_metric["rougeL"]["diff"], *per_metric["rougeL"]["ci"], per_metric["rougeL"]["p_value"])
    splits = {(s.metrics or {}).get("split") for s in systems} - {None}
    return {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "n": len(base.rows), "baseline": base.label, "samples": samples, "permutations": permutations, "seed": seed,
        "confidence": CONFIDENCE,
        "method": {
            "scores": "per-example ROUGE F1 x 100 from predictions.jsonl (rouge_score with stemming; flant5_lib.metrics)",
            "interval": f"paired percentile bootstrap, {samples} resamples of the examples, the same resample for both "
                        "systems; unpaired_ci resamples each system independently, for contrast",
            "test": f"two-sided paired sign-flip permutation test on per-example differences, {permutations} random "
                    "flips; p = (1 + flips with |mean| >= observed) / (1 + flips)",
            "bucket_rule": M.BUCKET_RULE,
        },
        "split": splits.pop() if len(splits) == 1 else None,
        "systems": {s.label: _system_summary(s, samples, seed) for s in systems},
        "pairs": pairs,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def verdict(metric: Mapping[str, Any], a: str, b: str, key: str = "rougeL") -> str:
    """One sentence a researcher can report: B beats A by x (paired p = ...), or the difference is noise."""
    label = key.replace("rouge", "ROUGE-")
    d, (lo, hi), p = metric["diff"], metric["ci"], metric["p_value"]
    shown = f"{label} {d:+.2f} (95% CI {lo:+.2f} to {hi:+.2f}, paired p = {p:.3g})"
    if p < SIGNIFICANCE and lo > 0:
        return f"{b} beats {a}: {shown}"
    if p < SIGNIFICANCE and hi < 0:
        return f"{b} is worse than {a}: {shown}"
    return f"{b} vs {a}: no significant difference, {shown}"


def write_compare_json(result: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    from flant5_lib.fileio import write_json

    return write_json(Path(out_dir) / "compare.json", result)
