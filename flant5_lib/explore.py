"""Dataset statistics for choosing max_source_length / max_target_length and reading SAMSum's shape.

Lengths are measured on exactly what the model sees: the source is `preprocess.format_source(dialogue)`
and the target is the reference summary, tokenised with the model's tokenizer (or a given one).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib.data import split_turns

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)
SPEAKER_RE = re.compile(r"^\s*([^:\n]{1,40}):")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without needing numpy for small lists."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def summarise(values: Sequence[float], qs: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """min / mean / percentiles / max of one length series."""
    if not values:
        return {"n": 0}
    out: dict[str, float] = {"n": len(values), "min": float(min(values)), "mean": round(sum(values) / len(values), 2)}
    out.update({f"p{q:g}": round(percentile(values, q), 2) for q in qs})
    out["max"] = float(max(values))
    return out


def round_up(n: float, multiple: int) -> int:
    """Next multiple (tensor-core friendly shapes: 8 for bf16, 16 to be safe)."""
    return int(math.ceil(max(n, 1) / multiple) * multiple)


def speakers(dialogue: str) -> list[str]:
    """Distinct speaker names, in order of first appearance ("Name: text" turns)."""
    seen: dict[str, None] = {}
    for turn in split_turns(dialogue):
        m = SPEAKER_RE.match(turn)
        if m:
            seen.setdefault(m.group(1).strip(), None)
    return list(seen)


def token_lengths(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1000) -> list[int]:
    """Token counts including EOS, as the model receives them (no truncation)."""
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        batch = list(texts[i : i + batch_size])
        ids = tokenizer(batch, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
        out.extend(len(s) for s in ids)
    return out


def split_lengths(
    ds: datasets.Dataset, params: Params, tokenizer: PreTrainedTokenizerBase | None = None
) -> dict[str, list[int]]:
    """Per-dialogue series of one split: turns, speakers, words and tokens of source and target."""
    from flant5_lib.preprocess import format_source

    dialogues, summaries = list(ds["dialogue"]), list(ds["summary"])
    sources = [format_source(d, params) for d in dialogues]
    series: dict[str, list[int]] = {
        "turns": [len(split_turns(d)) for d in dialogues],
        "speakers": [len(speakers(d)) for d in dialogues],
        "source_words": [len(s.split()) for s in sources],
        "target_words": [len(s.split()) for s in summaries],
    }
    if tokenizer is not None:
        series["source_tokens"] = token_lengths(tokenizer, sources)
        series["target_tokens"] = token_lengths(tokenizer, summaries)
    return series


def bucket_counts(turns: Sequence[int]) -> dict[str, int]:
    """Dialogues per SAMSum size bucket (utterance count); `metrics.size_bucket` defines them."""
    from flant5_lib.metrics import BUCKETS, size_bucket

    counts = Counter(size_bucket(n) for n in turns)
    ordered = {b: counts.pop(b, 0) for b in BUCKETS}
    ordered.update(sorted(counts.items()))  # any bucket outside SAMSum's four (e.g. very short dialogues)
    return ordered


def suggest_max_lengths(
    source_tokens: Sequence[int],
    target_tokens: Sequence[int],
    *,
    source_percentile: float = 99,
    target_percentile: float = 99,
    multiple: int = 16,
) -> dict[str, Any]:
    """max_source_length / max_target_length covering the chosen percentiles, rounded up to `multiple`.

    p99 rather than max: the longest 1% would double the padded batch shape for a handful of dialogues.
    """
    src = round_up(percentile(source_tokens, source_percentile), multiple)
    tgt = round_up(percentile(target_tokens, target_percentile), multiple)
    return {
        "max_source_length": src,
        "max_target_length": tgt,
        "source_percentile": source_percentile,
        "target_percentile": target_percentile,
        "multiple": multiple,
        "source_truncated_pct": round(100 * sum(n > src for n in source_tokens) / max(len(source_tokens), 1), 2),
        "target_truncated_pct": round(100 * sum(n > tgt for n in target_tokens) / max(len(target_tokens), 1), 2),
    }


def load_tokenizer_for(params: Params, tokenizer_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer lengths are measured with: `tokenizer_dir`, else the params' tokenizer or model."""
    from flant5_lib.errors import ModelError
    from flant5_lib.modeling import load_tokenizer, resolve_model_path

    if tokenizer_dir is not None:
        return load_tokenizer(str(tokenizer_dir))
    try:
        return load_tokenizer(params.tokenizer_name or resolve_model_path(params))
    except ModelError as err:  # typically a hub id while offline
        # the notebook's parameter first; the flags are `flant5 data explore`'s
        raise ModelError(f"{err}; set tokenizer_name to a local tokenizer folder (flant5 data explore: --tokenizer DIR "
                         "or --no-tokens)") from None


def dataset_stats(
    dd: datasets.DatasetDict | dict[str, datasets.Dataset],
    params: Params,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    source_percentile: float = 99,
    target_percentile: float = 99,
    multiple: int = 16,
) -> dict[str, Any]:
    """Everything `flant5 data explore` reports, as one JSON-able dict (series kept for plotting)."""
    splits: dict[str, Any] = {}
    series: dict[str, dict[str, list[int]]] = {}
    for name, ds in dd.items():
        s = split_lengths(ds, params, tokenizer)
        series[name] = s
        splits[name] = {
            "n": len(ds),
            **{k: summarise(v) for k, v in s.items()},
            "speaker_counts": dict(sorted(Counter(s["speakers"]).items())),
            "buckets": bucket_counts(s["turns"]),
        }
    stats: dict[str, Any] = {"dataset": params.dataset, "splits": splits, "series": series}
    # Lengths are chosen on the training split when there is one (never peek at test to set limits).
    basis = "train" if "train" in series else next(iter(series), None)
    if tokenizer is not None and basis is not None:
        stats["suggested"] = {
            "basis_split": basis,
            **suggest_max_lengths(
                series[basis]["source_tokens"], series[basis]["target_tokens"],
                source_percentile=source_percentile, target_percentile=target_percentile, multiple=multiple,
            ),
        }
    return stats


def format_table(stats: dict[str, Any]) -> str:
    """A fixed-width text table: one row per split and measure (what the CLI prints)."""
    measures = ["turns", "speakers", "source_words", "target_words", "source_tokens", "target_tokens"]
    cols = ["n", "min", "mean", "p50", "p90", "p95", "p99", "max"]
    lines = [f"{'split':<11}{'measure':<15}" + "".join(f"{c:>9}" for c in cols)]
    for split, s in stats["splits"].items():
        for m in measures:
            if m in s:
                lines.append(f"{split:<11}{m:<15}" + "".join(f"{s[m].get(c, 0):>9g}" for c in cols))
    lines.append("")
    lines.append(f"{'split':<11}{'dialogues':>10}  " + "  ".join(f"{b:>6}" for b in next(iter(stats['splits'].values()))["buckets"]))
    for split, s in stats["splits"].items():
        lines.append(f"{split:<11}{s['n']:>10}  " + "  ".join(f"{v:>6}" for v in s["buckets"].values()))
    if "suggested" in stats:
        g = stats["suggested"]
        lines.append("")
        lines.append(
            f"suggested (from {g['basis_split']}, p{g['source_percentile']:g}/p{g['target_percentile']:g} rounded up to "
            f"x{g['multiple']}): max_source_length={g['max_source_length']} ({g['source_truncated_pct']}% cut), "
            f"max_target_length={g['max_target_length']} ({g['target_truncated_pct']}% cut)"
        )
    return "\n".join(lines)


def write_stats(
    stats: dict[str, Any], out_dir: str | os.PathLike[str], params: Params | None = None
) -> dict[str, Path]:
    """stats.json (without the raw series) and the exploration PNGs; returns {name: path}."""
    from flant5_lib import plots
    from flant5_lib.fileio import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"stats": write_json(out / "stats.json", {k: v for k, v in stats.items() if k != "series"})}
    series = stats["series"]
    basis = stats.get("suggested", {}).get("basis_split") or ("train" if "train" in series else next(iter(series)))
    s = series[basis]
    written["turns"] = plots.plot_count_histogram(
        s["turns"], out / "turns.png", title=f"Utterances per dialogue ({basis})", xlabel="utterances",
        boundaries=(6.5, 12.5, 18.5),
    )
    written["speakers"] = plots.plot_count_histogram(
        s["speakers"], out / "speakers.png", title=f"Speakers per dialogue ({basis})", xlabel="speakers"
    )
    written["words"] = plots.plot_length_histograms(
        {"dialogue": s["source_words"], "summary": s["target_words"]}, out / "lengths_words.png",
        title=f"Length in words ({basis})", unit="words",
    )
    if "source_tokens" in s:
        limits = None
        if "suggested" in stats:
            limits = {"dialogue": stats["suggested"]["max_source_length"], "summary": stats["suggested"]["max_target_length"]}
        elif params is not None:
            limits = {"dialogue": params.max_source_length, "summary": params.max_target_length}
        written["tokens"] = plots.plot_length_histograms(
            {"dialogue": s["source_tokens"], "summary": s["target_tokens"]}, out / "lengths_tokens.png",
            title=f"Length in tokens ({basis}; red = suggested limit)", unit="tokens", limits=limits,
        )
    written["buckets"] = plots.plot_bucket_counts({k: v["buckets"] for k, v in stats["splits"].items()}, out / "buckets.png")
    return written


def explore_dataset(
    params: Params,
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    with_tokens: bool = True,
    source_percentile: float = 99,
    target_percentile: float = 99,
    multiple: int = 16,
) -> dict[str, Any]:
    """Load every split of `params.dataset`, measure it, and write stats.json + plots to `out_dir`."""
    from flant5_lib.data import Columns, load_splits

    dd = load_splits(params.dataset, missing_split="skip", seed=params.seed, columns=Columns.from_params(params))
    tokenizer = load_tokenizer_for(params, tokenizer_dir) if with_tokens else None
    stats = dataset_stats(
        dd, params, tokenizer, source_percentile=source_percentile, target_percentile=target_percentile, multiple=multiple
    )
    if out_dir is not None:
        stats["files"] = {k: str(v) for k, v in write_stats(stats, out_dir, params).items()}
    return stats


# The CLI's name for it. `flant5_lib.explore` (the package face) is this module, so the public name is explore_dataset.
explore = explore_dataset


def sample_dialogues(ds: datasets.Dataset, n: int = 3, seed: int | None = None) -> list[dict[str, Any]]:
    """A few records (the first `n`, or a seeded random pick) with their turn count and size bucket."""
    from flant5_lib.metrics import size_bucket

    idx = list(range(len(ds)))
    if seed is not None:
        idx = sorted(random.Random(seed).sample(idx, min(n, len(idx))))
    rows = []
    for i in idx[:n]:
        row = dict(ds[i])
        row["turns"] = len(split_turns(row["dialogue"]))
        row["bucket"] = size_bucket(row["turns"])
        rows.append(row)
    return rows


def format_dialogues(rows: Sequence[dict[str, Any]]) -> str:
    """Dialogues with their reference summaries, for terminals and notebook output."""
    blocks = []
    for r in rows:
        head = f"--- {r['id']} ({r.get('turns', '?')} utterances, bucket {r.get('bucket', '?')})"
        blocks.append(f"{head}\n{r['dialogue']}\n>>> Summary: {r['summary']}")
    return "\n\n".join(blocks)
