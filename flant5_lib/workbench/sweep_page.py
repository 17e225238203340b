"""sweep.html: the trials of a sweep, the metric against each hyperparameter, the best trial and its one test score.

In the run page's style (its CSS and helpers); each trial's row links to that trial's own run page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flant5_lib.workbench.report import CSS, _e, _img, collect_metrics, rouge_table_html


def plot_sweep(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """One panel per hyperparameter: each finished trial's validation metric against its value (log axis for a log
    scale, categories side by side), the best trial starred, failed trials as red crosses along the bottom."""
    from flant5_lib.plots import _empty, _figure, _save

    space = result["space"]
    names = list(space["parameters"])
    trials = result["trials"]
    ok = [t for t in trials if t["status"] == "ok" and t.get("value") is not None]
    failed = [t for t in trials if t["status"] == "failed"]
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = _figure(max(8.0, 4.3 * cols), 3.4 * rows + 0.4, nrows=rows, ncols=cols)
    flat = [ax for row in axes for ax in row]
    values = [t["value"] for t in ok]
    for ax, name in zip(flat, names):
        spec = space["parameters"][name]
        categorical = spec["type"] == "categorical"
        cats = [str(v) for v in spec.get("values", [])]

        def x_of(t: Mapping[str, Any]) -> Any:
            v = t["params"].get(name)
            return cats.index(str(v)) if categorical and str(v) in cats else v

        if not ok and not failed:
            _empty(ax, "no trial finished yet")
            ax.set_title(name, fontsize=10)
            continue
        ax.scatter([x_of(t) for t in ok], values, color="tab:blue", s=28, zorder=3, label="trial")
        for t in ok:
            ax.annotate(t["name"].removeprefix("trial-"), (x_of(t), t["value"]), xytext=(3, 3),
                        textcoords="offset points", fontsize=7, color="0.35")
        best = next((t for t in ok if t["name"] == result.get("best")), None)
        if best is not None:
            ax.scatter([x_of(best)], [best["value"]], marker="*", s=190, color="tab:orange", zorder=4, label="best")
        if failed:  # no value: along the bottom edge, whatever the y range
            from matplotlib.transforms import blended_transform_factory

            ax.scatter([x_of(t) for t in failed], [0.03] * len(failed), marker="x", color="tab:red", s=36, zorder=3,
                       label="failed (no value)", transform=blended_transform_factory(ax.transData, ax.transAxes))
        _space_axis(ax, spec, cats)
        ax.set_xlabel(f"{name} ({spec['type']}{', log' if spec.get('scale') == 'log' else ''})", fontsize=9)
        ax.set_ylabel(f"validation {space['metric']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)
    for ax in flat[len(names):]:
        ax.set_axis_off()
    fig.suptitle(f"{len(ok)} trials ok, {len(failed)} failed ({space['algorithm']} search); x axes span the space",
                 fontsize=10)
    handles, labels = flat[0].get_legend_handles_labels() if flat else ([], [])
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        return _save(fig, path, rect=(0, 0.05, 1, 1))
    return _save(fig, path)


def _space_axis(ax: Any, spec: Mapping[str, Any], cats: list[str]) -> None:
    """The x axis spans the whole range searched (where in it the trials landed is the point), with plain ticks."""
    import numpy as np

    kind = spec["type"]
    if kind == "categorical":
        ax.set_xticks(range(len(cats)), cats, fontsize=8)
        ax.set_xlim(-0.5, len(cats) - 0.5)
        return
    lo, hi = (spec["min"], spec["max"]) if kind in ("double", "integer") else (min(spec["values"]), max(spec["values"]))
    if spec.get("scale") == "log":
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = list(np.geomspace(lo, hi, 4)) if kind == "double" else sorted(
            set(spec.get("values") or np.unique(np.geomspace(lo, hi, 4).round())))
        ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks], fontsize=8)
        ax.set_xlim(lo / 1.2, hi * 1.2)
        return
    pad = (hi - lo) * 0.08 or 0.5
    ax.set_xlim(lo - pad, hi + pad)
    if kind == "discrete":
        ax.set_xticks(spec["values"], [f"{v:g}" for v in spec["values"]], fontsize=8)
    elif kind == "integer" and hi - lo <= 12:
        ax.set_xticks(range(int(lo), int(hi) + 1))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _e(v)


def _trials_table(result: Mapping[str, Any], sweep_dir: Path) -> str:
    space = result["space"]
    names = list(space["parameters"])
    metric = space["metric"]
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    others = [k for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "loss") if k != metric.removeprefix("eval_")]
    rows = []
    for t in result["trials"]:
        link = (f"<a href='{_e(t['name'])}/index.html'>{_e(t['name'])}</a>"
                if (sweep_dir / t["name"] / "index.html").is_file() else _e(t["name"]))
        best = t["name"] == result.get("best")
        value = f"{t['value']:.3f}" if t.get("value") is not None else "–"
        val = t.get("validation") or {}
        extra = "".join(f"<td class='num nowrap'>{val[f'eval_{k}']:.2f}</td>" if val.get(f"eval_{k}") is not None else "<td>–</td>"
                        for k in others)
        secs = f"{t['seconds']:.0f} s" if t.get("seconds") is not None else "–"
        rows.append(f"<tr><td class=nowrap>{link}{' ★' if best else ''}</td><td class=nowrap><span class='badge "
                    f"{_e(t['status'])}'>{_e(t['status'])}</span></td>"
                    + "".join(f"<td class=num>{_fmt(t['params'].get(n))}</td>" for n in names)
                    + f"<td class='{'num best' if best else 'num'}'>{value}</td>{extra}"
                    f"<td class='num nowrap'>{secs}</td></tr>")
        if t.get("error"):
            rows.append(f"<tr class=errrow><td colspan={4 + len(names) + len(others)}><div class=err>{_e(t['error'])}</div>"
                        "</td></tr>")
    n = next((t.get("validation", {}).get("eval_rouge_samples") for t in result["trials"] if t.get("validation")), None)
    return (f"<table><tr><th>trial</th><th>status</th>{head}<th>validation {_e(metric)}</th>"
            + "".join(f"<th>{_e(k)}</th>" for k in others) + f"<th>time</th></tr>{''.join(rows)}</table>"
            f"<p class=note>Validation scores of each trial's published checkpoint (the best of its evaluations on "
            f"{_e(metric)}){f', on {n} validation dialogues' if n else ''}; ★ the best trial. Each trial is an ordinary "
            "run folder: its link opens its run page.</p>")


def _test_html(result: Mapping[str, Any], sweep_dir: Path) -> str:
    best = result.get("best")
    if not best:
        return "<p class=note>No trial finished: nothing to score on the test split.</p>"
    history = result.get("test_history") or []
    entry = next((h for h in history if h.get("trial") == best), None)
    split = result.get("eval_split", "test")
    if entry is None:
        err = result.get("test_error")
        return (f"<p class=warn>The test split was not scored for {_e(best)}"
                + (f": {_e(err)}" if err else " (the sweep ran with --no-test)") + ".</p>")
    metrics = collect_metrics(sweep_dir / best)
    earlier = [h["trial"] for h in history if h.get("trial") != best]
    note = (f"<p class=banner>The <b>{_e(split)}</b> split was scored <b>once</b>, for the chosen trial "
            f"<b>{_e(best)}</b> only (chosen on validation {_e(result['space']['metric'])}), at {_e(entry.get('scored_at'))}. "
            "The other trials were never scored on it, so this figure did not take part in the choice.</p>")
    if earlier:
        note += (f"<p class=warn>Earlier runs of this sweep also scored {_e(', '.join(earlier))} on the {_e(split)} split "
                 "(the best trial then); a choice among those would have seen the test split.</p>")
    return note + rouge_table_html(metrics)


def _compare_hint(result: Mapping[str, Any], sweep_dir: Path) -> str:
    """The commands that answer "is the best trial really better than the runner-up?" on the validation split."""
    ok = sorted((t for t in result["trials"] if t["status"] == "ok" and t.get("value") is not None),
                key=lambda t: t["value"], reverse=result["space"]["goal"] == "maximize")
    if len(ok) < 2:
        return "<p class=note>Fewer than two finished trials: nothing to compare.</p>"
    a, b = ok[1]["name"], ok[0]["name"]
    here = Path.cwd().resolve()
    folder = sweep_dir.resolve().relative_to(here) if sweep_dir.resolve().is_relative_to(here) else sweep_dir
    cmds = [f"flant5 evaluate --params {folder / t}/params.yaml --split validation --name validation" for t in (a, b)]
    cmds.append(f"flant5 compare {folder / a}/eval/validation {folder / b}/eval/validation --out "
                f"{folder}/compare-{a}-vs-{b}")
    return ("<p class=note>Is the best trial's lead over the runner-up more than noise? Score both on the validation "
            "split (where they were ranked, never the test split) and compare them, paired:</p><pre>"
            + _e("\n".join(cmds)) + "</pre>")


def render_sweep(result: Mapping[str, Any], sweep_dir: str | os.PathLike[str], plot: Path | None = None) -> str:
    sweep_dir = Path(sweep_dir)
    space = result["space"]
    trials = result["trials"]
    n_ok = sum(t["status"] == "ok" for t in trials)
    n_failed = sum(t["status"] == "failed" for t in trials)
    best = next((t for t in trials if t["name"] == result.get("best")), None)
    best_value = f" = {best['value']:.3f}" if best else ""
    limit = f", max_minutes {space['max_minutes']:g}" if space.get("max_minutes") else ""
    cards = [
        f"<div class=card><b>{_e(result.get('best') or '–')}</b><span>best on validation {_e(space['metric'])}"
        f"{best_value}</span></div>",
        f"<div class=card><b>{n_ok} / {len(trials)}</b><span>trials ok ({n_failed} failed; max_trials "
        f"{space['max_trials']})</span></div>",
        f"<div class=card><b>{_e(space['algorithm'])}</b><span>{_e(space['goal'])} {_e(space['metric'])}{limit}</span></div>",
    ]
    minutes = sum(t.get("seconds") or 0 for t in trials) / 60
    cards.append(f"<div class=card><b>{minutes:.1f} min</b><span>spent in trials</span></div>")
    stop = f"<p class=note>Stopped early: {_e(result['stop_reason'])}.</p>" if result.get("stop_reason") else ""
    best_params = ("<pre>" + _e("\n".join(f"{k}: {v}" for k, v in best["params"].items())) + "</pre>") if best else ""
    figure = (f"<figure class=wide>{_img(plot)}<figcaption>Validation {_e(space['metric'])} against each hyperparameter — "
              f"<a href='{_e(plot.name)}'>{_e(plot.name)}</a></figcaption></figure>"
              if plot is not None and plot.is_file() else "")
    import yaml

    sections = [
        ("Trials", f"<div class=cards>{''.join(cards)}</div>{stop}{_trials_table(result, sweep_dir)}"),
        ("Metric against each hyperparameter", figure or "<p class=note>No plot yet.</p>"),
        ("Best trial", best_params + (f"<p class=note>Its run folder: <a href='{_e(best['name'])}/index.html'>"
                                      f"{_e(best['name'])}</a></p>" if best else "")),
        (f"The chosen trial on the {result.get('eval_split', 'test')} split", _test_html(result, sweep_dir)),
        ("Is the best really better than the runner-up?", _compare_hint(result, sweep_dir)),
        ("Space and parameters", f"<p class=note>Space file <code>{_e(result['space_file'])}</code>; base params "
                                 f"<code>{_e(result.get('params_file') or '(defaults)')}</code> with "
                                 f"<code>{_e(result.get('overrides'))}</code>.</p><pre>"
                                 f"{_e(yaml.safe_dump(space, sort_keys=False))}</pre>"),
    ]
    body = "".join(f"<h2>{_e(t)}</h2>{c}" for t, c in sections)
    title = f"Sweep · {sweep_dir.name}"
    status = result.get("status", "running")
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{_e(title)} <span class='badge {_e(status)}'>{_e(status)}</span></h1>"
        f"<p class=sub>{_e(sweep_dir)} · started {_e(result.get('started_at', ''))} · finished "
        f"{_e(result.get('finished_at') or '–')} · trials ranked on {_e(result.get('ranked_on', 'validation'))}</p>"
        f"{body}</main></body></html>\n"
    )

