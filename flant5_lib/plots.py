"""PNG plots for training, evaluation and data exploration.

Every function builds its own `matplotlib.figure.Figure` on the Agg canvas (no `pyplot`, so no global
figure state leaks between notebook cells or server threads) and writes the PNG atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flant5_lib.fileio import atomic_path
from flant5_lib.metrics import BUCKETS

log = logging.getLogger(__name__)

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
DPI = 110


def _figure(width: float = 8.0, height: float = 4.5, *, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: str | os.PathLike[str], rect: tuple[float, float, float, float] | None = None) -> Path:
    fig.tight_layout(rect=rect)  # rect: room kept free for a figure-level legend
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # the temp name has no suffix, so say the format
    return Path(path)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


# --- training ----------------------------------------------------------------------------------


def _epoch_starts(log_history: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(epoch number, first step logged in it) for every epoch after the first: where the epoch markers go."""
    marks: list[tuple[int, int]] = []
    for e in log_history:
        if "epoch" in e and "step" in e and e["epoch"] is not None:
            k = int(float(e["epoch"]) + 1e-6)
            if k >= 1 and (not marks or k > marks[-1][0]) and float(e["epoch"]) - k < 0.5:
                marks.append((k, int(e["step"])))
    return marks


def _mark_epochs(ax: Any, marks: Sequence[tuple[int, int]]) -> None:
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for k, step in marks:
        ax.axvline(step, color="0.6", ls=":", lw=1)
        ax.text(step, 0.99, f" end of epoch {k}", transform=trans, va="top", ha="left", fontsize=7, color="0.4")


def plot_loss_curves(log_history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Train and validation loss against optimiser step (log scale, epoch boundaries dotted), from
    `Trainer.state.log_history`; with a second panel of validation ROUGE when the evaluations computed it.

    A log axis because the first steps of a fresh model sit at 10-40 nats and would flatten the rest to a line.
    """
    from flant5_lib.metrics import ROUGE_KEYS as KEYS

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    rouge = {k: [(e["step"], e[f"eval_{k}"]) for e in log_history if e.get(f"eval_{k}") is not None and "step" in e]
             for k in KEYS if k != "rougeLsum"}
    rouge = {k: v for k, v in rouge.items() if v}
    fig, axes = _figure(12.5 if rouge else 7.5, 4.2, ncols=2 if rouge else 1)
    ax = axes[0][0]
    marks = _epoch_starts(log_history)
    if not train and not evals:
        _empty(ax, "no loss was logged (too few steps for logging_steps?)")
    else:
        if train:
            ax.plot(*zip(*train), label="train loss", color="tab:blue", lw=1.4, marker="." if len(train) < 30 else None)
        if evals:
            ax.plot(*zip(*evals), label="validation loss", color="tab:orange", lw=1.8, marker="o")
        if all(v > 0 for _, v in train + evals):
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.6, 2, 40 rather than 6x10^-1
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        _mark_epochs(ax, marks)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("cross-entropy loss (log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right", bbox_to_anchor=(1, 0.92), fontsize=8)
    ax.set_title("Loss")
    if rouge:
        rx = axes[0][1]
        for i, (k, pts) in enumerate(rouge.items()):
            rx.plot(*zip(*pts), marker="o", lw=1.6, color=f"C{i + 2}", label=ROUGE_LABELS[k])
        best = max(rouge.get("rougeL") or next(iter(rouge.values())), key=lambda p: p[1])
        rx.annotate(f"best {best[1]:.1f}", best, xytext=(0, 8), textcoords="offset points", ha="center", fontsize=8)
        rx.set_xlim(ax.get_xlim())  # the same steps under both panels
        _mark_epochs(rx, marks)
        rx.set_xlabel("optimiser step")
        rx.set_ylabel("F1 x 100")
        rx.set_title("Validation ROUGE during training")
        rx.grid(alpha=0.3)
        rx.margins(y=0.15)
        rx.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


# --- evaluation ----------------------------------------------------------------------------------


def _ci_errors(metrics: Mapping[str, Any], key: str) -> tuple[float, float]:
    mean = float(metrics.get(key, 0.0))
    lo, hi = (metrics.get("ci") or {}).get(key, (mean, mean))
    return max(mean - lo, 0.0), max(hi - mean, 0.0)


def plot_rouge_comparison(
    metrics_by_name: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Grouped bars (one group per ROUGE variant, one bar per system) with 95% bootstrap intervals."""
    import numpy as np

    names = list(metrics_by_name)
    fig, axes = _figure(max(7.0, 2.0 + 1.2 * len(names) * 1.2), 4.6)
    ax = axes[0][0]
    if not names:
        _empty(ax, "no systems to compare")
        return _save(fig, path)
    x = np.arange(len(ROUGE_KEYS))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        m = metrics_by_name[name]
        values = [float(m.get(k, 0.0)) for k in ROUGE_KEYS]
        errs = np.array([_ci_errors(m, k) for k in ROUGE_KEYS]).T
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, yerr=errs, capsize=3, label=name)
        for bar, v, up in zip(bars, values, errs[1]):
            ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, v + up), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, rotation=90 if width < 0.2 else 0)
    ax.set_xticks(x, [ROUGE_LABELS[k] for k in ROUGE_KEYS])
    ax.set_ylabel("F1 x 100 (error bars: 95% bootstrap CI)")
    n = {metrics_by_name[k].get("n") for k in names}
    ax.set_title(title or "ROUGE by system" + (f" (n={n.pop()})" if len(n) == 1 else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(names), 4), frameon=False)
    return _save(fig, path)


def _with_bucket_intervals(
    metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] | None, keys: Sequence[str]
) -> Mapping[str, Any]:
    """`metrics` with a bootstrap `ci` added to each bucket that lacks one, from the per-example rows."""
    buckets = metrics.get("buckets") or {}
    if not rows or all((b or {}).get("ci") for b in buckets.values() if (b or {}).get("n")):
        return metrics
    from flant5_lib.metrics import bootstrap_ci

    filled = {}
    for name, b in buckets.items():
        scores = [r for r in rows if r.get("bucket") == name]
        if b and b.get("n") and not b.get("ci") and scores:
            b = {**b, "ci": {k: list(bootstrap_ci([float(r[k]) for r in scores])) for k in keys if k in scores[0]}}
        filled[name] = b
    return {**metrics, "buckets": filled}


def plot_rouge_by_bucket(
    metrics_by_name: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    keys: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    per_example: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """ROUGE per dialogue-length bucket (utterance count, SAMSum's 3-6/7-12/13-18/19-30), one panel per metric.

    Error bars are each bucket's 95% bootstrap interval: from metrics.json when it has one, else computed from
    `per_example` ({system: predictions.jsonl rows}). A bucket of 6 dialogues deserves a wide bar, not a bare mean.
    Empty buckets are left out, not drawn as 0; the legend sits below the panels so it covers no bar.
    """
    import numpy as np

    metrics_by_name = {n: _with_bucket_intervals(m, (per_example or {}).get(n), keys) for n, m in metrics_by_name.items()}
    names = list(metrics_by_name)
    fig, axes = _figure(4.2 * len(keys), 4.6, ncols=len(keys))
    ref = next((metrics_by_name[n].get("buckets") for n in names if metrics_by_name[n].get("buckets")), {}) or {}
    labels = [f"{b}\n(n={ref.get(b, {}).get('n', 0)})" for b in BUCKETS]
    x = np.arange(len(BUCKETS))
    width = 0.8 / max(len(names), 1)
    handles = []
    for ax, key in zip(axes[0], keys):
        for i, name in enumerate(names):
            buckets = metrics_by_name[name].get("buckets") or {}
            pos = x + (i - (len(names) - 1) / 2) * width
            shown = [(p, buckets[b]) for p, b in zip(pos, BUCKETS) if (buckets.get(b) or {}).get("n")]
            if not shown:
                continue
            values = [float(m.get(key, 0.0)) for _, m in shown]
            errs = np.array([_ci_errors(m, key) for _, m in shown]).T if any(m.get("ci") for _, m in shown) else None
            bars = ax.bar([p for p, _ in shown], values, width, yerr=errs, capsize=2, color=f"C{i}", label=name)
            if ax is axes[0][0]:
                handles.append(bars)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("utterances per dialogue")
        ax.set_title(ROUGE_LABELS.get(key, key))
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.1)
    axes[0][0].set_ylabel("F1 x 100" + (" (95% intervals)" if any(
        (b or {}).get("ci") for m in metrics_by_name.values() for b in (m.get("buckets") or {}).values()) else ""))
    if handles:
        fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="lower center", ncol=min(len(handles), 6),
                   fontsize=8, frameon=False)
        return _save(fig, path, rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def plot_score_histogram(
    values: Sequence[float] | Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    title: str = "Per-dialogue ROUGE-L",
    *,
    xlabel: str = "F1 x 100",
    bins: int = 20,
) -> Path:
    """Distribution of per-example scores (one series, or several overlaid) with each mean marked."""
    import numpy as np

    series = dict(values) if isinstance(values, Mapping) else {"": values}
    fig, axes = _figure(7.0, 4.2)
    ax = axes[0][0]
    if not any(len(v) for v in series.values()):
        _empty(ax, "no scores")
    else:
        edges = np.linspace(0, 100, bins + 1)
        for i, (name, vals) in enumerate(series.items()):
            arr = np.asarray(vals, dtype=float)
            color = f"C{i}"
            label = f"{name + ' ' if name else ''}mean {arr.mean():.1f}"
            if len(series) > 1:  # outlines: overlaid filled bars blend into colours no legend explains
                ax.hist(arr, bins=edges, histtype="step", lw=2, color=color, label=label)
            else:
                ax.hist(arr, bins=edges, alpha=0.85, color=color, label=label)
            ax.axvline(arr.mean(), color=color, ls="--", lw=1.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dialogues")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


# --- exploration ---------------------------------------------------------------------------------


def _integer_edges(arr: Any, bins: int) -> Any:
    """Bin edges of whole-number width centred on integers, so counts of words/tokens show no comb gaps."""
    import numpy as np

    lo, hi = float(arr.min()), float(arr.max())
    width = max(1.0, float(np.ceil((hi - lo + 1) / bins)))
    return np.arange(lo, hi + width + 1, width) - 0.5


def plot_length_histograms(
    lengths: Mapping[str, Sequence[int]],
    path: str | os.PathLike[str],
    *,
    title: str = "Lengths",
    unit: str = "words",
    percentiles: Sequence[float] = (50, 95, 99),
    limits: Mapping[str, int] | None = None,
    bins: int = 40,
) -> Path:
    """One panel per series (e.g. 'dialogue', 'summary'), with percentile lines and optional limit lines.

    `limits` (e.g. {'dialogue': max_source_length}) draws a red line so truncation is visible at a glance.
    """
    import numpy as np

    names = list(lengths)
    fig, axes = _figure(4.6 * max(len(names), 1), 4.0, ncols=max(len(names), 1))
    for ax, name in zip(axes[0], names):
        arr = np.asarray(lengths[name], dtype=float)
        if arr.size == 0:
            _empty(ax, f"no {name} lengths")
            continue
        ax.hist(arr, bins=_integer_edges(arr, bins), color="tab:blue", alpha=0.8)
        for j, p in enumerate(percentiles):
            v = float(np.percentile(arr, p))
            ax.axvline(v, color=f"C{j + 1}", ls="--", lw=1.2, label=f"p{p:g} = {v:.0f}")
        if limits and name in limits:
            over = float((arr > limits[name]).mean() * 100)
            ax.axvline(limits[name], color="red", lw=1.6, label=f"limit {limits[name]} ({over:.1f}% over)")
        ax.set_title(f"{name} ({unit}), n={arr.size}")
        ax.set_xlabel(unit)
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if not names:
        _empty(axes[0][0], "no data")
    fig.suptitle(title)
    return _save(fig, path)


def plot_count_histogram(
    counts: Sequence[int],
    path: str | os.PathLike[str],
    *,
    title: str,
    xlabel: str,
    boundaries: Sequence[float] = (),
) -> Path:
    """Bar chart of small integer counts (turns or speakers per dialogue); `boundaries` draws bucket edges."""
    from collections import Counter

    fig, axes = _figure(7.0, 4.0)
    ax = axes[0][0]
    if not counts:
        _empty(ax, "no data")
    else:
        freq = Counter(int(c) for c in counts)
        xs = sorted(freq)
        ax.bar(xs, [freq[x] for x in xs], width=0.85, color="tab:green")
        for b in boundaries:
            ax.axvline(b, color="0.3", ls=":", lw=1)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts of people or turns: no 2.5 ticks
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dialogues")
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title} (n={len(counts)})")
    return _save(fig, path)


def plot_bucket_counts(counts_by_split: Mapping[str, Mapping[str, int]], path: str | os.PathLike[str]) -> Path:
    """Dialogues per size bucket for each split (how SAMSum's evaluation buckets are populated)."""
    import numpy as np

    names = list(counts_by_split)
    fig, axes = _figure(7.0, 4.0)
    ax = axes[0][0]
    x = np.arange(len(BUCKETS))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        total = sum(counts_by_split[name].values()) or 1
        share = [100 * counts_by_split[name].get(b, 0) / total for b in BUCKETS]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, share, width, label=f"{name} (n={total})")
    ax.set_xticks(x, BUCKETS)
    ax.set_xlabel("utterances per dialogue")
    ax.set_ylabel("% of dialogues")
    ax.set_title("Dialogues per size bucket")
    if names:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
