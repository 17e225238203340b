"""Every plot writes a real PNG (atomically) and leaves no pyplot figures behind."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from flant5_lib import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(r1: float, n: int = 50) -> dict:
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    values = {k: r1 - 5 * i for i, k in enumerate(keys)}
    return {
        **values, "n": n, "ci": {k: [v - 2, v + 2] for k, v in values.items()},
        "buckets": {b: {"n": n // 4, **{k: v - j for k, v in values.items()}} for j, b in enumerate(plots.BUCKETS)},
    }


def _assert_png(path: Path, min_width: int = 300) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[1] >= min_width
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


LOG_HISTORY = [
    {"loss": 3.2, "step": 10, "epoch": 0.5}, {"loss": 2.5, "step": 20, "epoch": 1.0},
    {"eval_loss": 2.7, "step": 20, "epoch": 1.0}, {"loss": 2.1, "step": 30, "epoch": 1.5},
    {"loss": 1.9, "step": 40, "epoch": 2.0}, {"eval_loss": 2.2, "step": 40, "epoch": 2.0},
    {"train_runtime": 12.0, "step": 40},
]


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: plots.plot_loss_curves(LOG_HISTORY, p),
        lambda p: plots.plot_loss_curves([{"train_runtime": 1.0}], p),  # nothing logged: a message, not a crash
        lambda p: plots.plot_rouge_comparison({"finetuned": _metrics(45), "lead3": _metrics(31), "longest3": _metrics(32)}, p),
        lambda p: plots.plot_rouge_comparison({}, p),
        lambda p: plots.plot_rouge_by_bucket({"finetuned": _metrics(45), "lead3": _metrics(31)}, p),
        lambda p: plots.plot_score_histogram(np.random.default_rng(0).uniform(0, 100, 200).tolist(), p, "ROUGE-L"),
        lambda p: plots.plot_score_histogram({"rouge1": [10.0, 50.0, 70.0], "rougeL": [5.0, 40.0, 60.0]}, p),
        lambda p: plots.plot_length_histograms(
            {"dialogue": np.random.default_rng(1).integers(10, 600, 500).tolist(), "summary": list(range(5, 60))},
            p, title="Tokens", unit="tokens", limits={"dialogue": 512},
        ),
        lambda p: plots.plot_count_histogram([3, 4, 4, 5, 9, 12, 20, 31], p, title="Turns per dialogue", xlabel="turns",
                                             boundaries=(6.5, 12.5, 18.5)),
        lambda p: plots.plot_bucket_counts({"train": {"3-6": 10, "7-12": 8}, "test": {"3-6": 2, "19-30": 1}}, p),
    ],
    ids=["loss", "loss-empty", "comparison", "comparison-empty", "buckets", "hist", "hist-multi", "lengths", "counts",
         "bucket-counts"],
)
def test_plot_writes_png(draw, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    out = draw(tmp_path / "sub" / "plot.png")
    assert out == tmp_path / "sub" / "plot.png"
    _assert_png(out)
    assert plt.get_fignums() == before  # Figure objects only: no global pyplot state


def test_overwrite_replaces_plot(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    plots.plot_loss_curves(LOG_HISTORY[:2], path)
    first = path.read_bytes()
    plots.plot_loss_curves(LOG_HISTORY, path)
    assert path.read_bytes() != first
    _assert_png(path)


@pytest.fixture
def drawn(monkeypatch):
    """The Figure a plot function builds, kept for inspection (it is still saved to its PNG as usual)."""
    figures = []
    save = plots._save

    def keep(fig, path, rect=None):
        figures.append(fig)
        return save(fig, path, rect)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_loss_is_on_a_log_axis_with_epoch_marks_and_the_rouge_panel(tmp_path, drawn):
    history = [*LOG_HISTORY[:-1], {"eval_loss": 2.0, "eval_rouge1": 30.0, "eval_rouge2": 9.0, "eval_rougeL": 27.0,
                                   "step": 60, "epoch": 3.0}]
    plots.plot_loss_curves(history, tmp_path / "loss.png")
    loss, rouge = drawn[0].axes
    assert loss.get_yscale() == "log"
    marks = [t.get_text().strip() for t in loss.texts]
    assert marks == ["end of epoch 1", "end of epoch 2", "end of epoch 3"]
    assert rouge.get_title() == "Validation ROUGE during training" and len(rouge.lines) >= 3
    plots.plot_loss_curves(LOG_HISTORY, tmp_path / "plain.png")
    assert len(drawn[1].axes) == 1  # no ROUGE computed during training: no empty second panel


def test_bucket_plot_draws_intervals_skips_empty_buckets_and_keeps_the_legend_off_the_bars(tmp_path, drawn):
    m = _metrics(45)
    for b in m["buckets"].values():
        b["ci"] = {k: [b[k] - 3, b[k] + 3] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    m["buckets"]["19-30"] = {"n": 0}
    plots.plot_rouge_by_bucket({"finetuned": m}, tmp_path / "b.png")
    fig = drawn[0]
    ax = fig.axes[0]
    assert len(ax.patches) == 3  # three populated buckets, the empty one left out (not a bar at 0)
    assert any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers)
    assert not ax.get_legend() and fig.legends


def test_counts_have_integer_ticks_and_histograms_outline_several_series(tmp_path, drawn):
    plots.plot_count_histogram([1, 2, 2, 3], tmp_path / "c.png", title="Speakers", xlabel="speakers")
    ticks = drawn[0].axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks)
    plots.plot_score_histogram({"a": [10.0, 50.0], "b": [20.0, 60.0]}, tmp_path / "h.png")
    assert all(p.get_fill() is False for p in drawn[1].axes[0].patches)  # outlines: overlaid series stay readable


def test_bucket_intervals_come_from_the_predictions_when_metrics_have_none(tmp_path, drawn):
    m = {"rougeL": 50.0, "buckets": {"3-6": {"n": 4, "rougeL": 50.0}, "7-12": {"n": 0}}}
    rows = [{"bucket": "3-6", "rouge1": v, "rouge2": v, "rougeL": v} for v in (20.0, 40.0, 60.0, 80.0)]
    plots.plot_rouge_by_bucket({"finetuned": m}, tmp_path / "a.png", keys=("rougeL",))
    assert not any(type(c).__name__ == "ErrorbarContainer" for c in drawn[0].axes[0].containers)
    plots.plot_rouge_by_bucket({"finetuned": m}, tmp_path / "b.png", keys=("rougeL",), per_example={"finetuned": rows})
    bars = [c for c in drawn[1].axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    (lo, hi), = [seg[:, 1] for seg in bars[0].lines[2][0].get_segments()]
    assert 20 <= lo < 50 < hi <= 80  # a bootstrap interval of those four scores around their mean
