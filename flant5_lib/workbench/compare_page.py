"""compare.html: the paired comparison of `flant5_lib.compare` as a page in the run page's style (its CSS and helpers).

Self-contained like index.html (the plot is embedded), so it can be mailed or attached alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flant5_lib.metrics import BUCKETS, ROUGE_KEYS
from flant5_lib.workbench.report import CSS, _clip, _e, _img, rouge_table_html

log = logging.getLogger(__name__)

LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
PLOT = "paired_differences.png"


# --- the plot ---------------------------------------------------------------------------------------------


def plot_differences(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """B - A per metric with the paired 95% interval (thick) over the unpaired one (thin), and ROUGE-L per size bucket.

    One row per pair; zero is the dashed line, so "does the interval cross zero" reads at a glance.
    """
    from flant5_lib.plots import _figure, _save

    pairs = result["pairs"]
    fig, axes = _figure(11.0, 1.0 + 2.2 * max(len(pairs), 1), nrows=max(len(pairs), 1), ncols=2)
    for row, pair in zip(axes, pairs):
        ax, axb = row
        ys = list(range(len(ROUGE_KEYS)))[::-1]
        for y, k in zip(ys, ROUGE_KEYS):
            m = pair["metrics"][k]
            ax.plot(m["unpaired_ci"], [y, y], color="0.7", lw=1.5, label="unpaired 95% CI" if y == ys[0] else None)
            ax.plot(m["ci"], [y, y], color="tab:blue", lw=5, solid_capstyle="butt",
                    label="paired 95% CI" if y == ys[0] else None)
            ax.plot([m["diff"]], [y], "o", color="black", ms=4)
        ax.axvline(0, color="0.3", ls="--", lw=1)
        ax.set_yticks(ys, [LABELS[k] for k in ROUGE_KEYS])
        ax.set_xlabel(f"{pair['b']} - {pair['a']} (F1 x 100)")
        ax.set_title(f"{pair['b']} vs {pair['a']}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", frameon=False)
        buckets = pair.get("buckets") or {}
        shown = [b for b in BUCKETS if (buckets.get(b) or {}).get("n")]
        if not shown:
            axb.set_axis_off()
            continue
        yb = list(range(len(shown)))[::-1]
        for y, b in zip(yb, shown):
            m = buckets[b]["rougeL"]
            axb.plot(m["ci"], [y, y], color="tab:orange", lw=5, solid_capstyle="butt")
            axb.plot([m["diff"]], [y], "o", color="black", ms=4)
        axb.axvline(0, color="0.3", ls="--", lw=1)
        axb.set_yticks(yb, [f"{b} (n={buckets[b]['n']})" for b in shown])
        axb.set_xlabel("ROUGE-L difference, paired 95% CI")
        axb.set_title("by dialogue size (utterances)", fontsize=10)
        axb.grid(axis="x", alpha=0.3)
    return _save(fig, path)


# --- HTML pieces ----------------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return f"{100 * float(v):.1f}%" if v is not None else "–"


def _pair_table(pair: Mapping[str, Any]) -> str:
    from flant5_lib.compare import SIGNIFICANCE

    rows = []
    for k in ROUGE_KEYS:
        m = pair["metrics"][k]
        lo, hi = m["ci"]
        sig = m["p_value"] < SIGNIFICANCE and (lo > 0 or hi < 0)
        cls = "num best" if sig else "num"
        rows.append(
            f"<tr><td>{LABELS[k]}</td><td class=num>{m['a']:.2f}</td><td class=num>{m['b']:.2f}</td>"
            f"<td class='{cls}'>{m['diff']:+.2f}<span class=ci>{lo:+.2f} – {hi:+.2f}</span></td>"
            f"<td class=num>{m['unpaired_ci'][0]:+.2f} – {m['unpaired_ci'][1]:+.2f}</td>"
            f"<td class=num>{_pct(m['b_wins_share'])}</td><td class=num>{m['p_value']:.4f}</td></tr>")
    return (f"<table><tr><th>metric</th><th>{_e(pair['a'])} (A)</th><th>{_e(pair['b'])} (B)</th>"
            "<th>B − A<span class=ci>paired 95% CI</span></th><th>unpaired 95% CI<span class=ci>for contrast</span></th>"
            "<th>B wins<span class=ci>share of resamples</span></th><th>p<span class=ci>paired sign-flip</span></th></tr>"
            f"{''.join(rows)}</table>")


def _buckets_table(pair: Mapping[str, Any]) -> str:
    buckets = pair.get("buckets")
    if not buckets:
        return "<p class=note>No utterance counts in the predictions: no size buckets.</p>"
    head = "".join(f"<th>{LABELS[k]} B − A</th>" for k in ROUGE_KEYS)
    rows = []
    for b in BUCKETS:
        v = buckets.get(b) or {}
        if not v.get("n"):
            rows.append(f"<tr><td>{b}</td><td class=num>0</td>" + "<td>–</td>" * len(ROUGE_KEYS) + "</tr>")
            continue
        cells = "".join(f"<td class=num>{v[k]['diff']:+.2f}<span class=ci>{v[k]['ci'][0]:+.2f} – {v[k]['ci'][1]:+.2f}"
                        "</span></td>" for k in ROUGE_KEYS)
        rows.append(f"<tr><td>{b}</td><td class=num>{v['n']}</td>{cells}</tr>")
    return (f"<table><tr><th>utterances</th><th>n</th>{head}</tr>{''.join(rows)}</table>"
            "<p class=note>Small numbers: paired 95% bootstrap interval within the bucket. A small bucket has a wide "
            "interval; no multiple-testing correction is applied across buckets.</p>")


def _params_table(pair: Mapping[str, Any]) -> str:
    diff = pair.get("params_diff")
    if diff is None:
        return "<p class=note>No params.yaml beside one of the two (not inside a run folder): nothing to diff.</p>"
    if not diff:
        return "<p class=note>The two runs' params.yaml agree on every field (run_dir aside).</p>"
    rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(a)}</td><td>{_e(b)}</td></tr>" for k, (a, b) in diff.items())
    return f"<table><tr><th>field</th><th>{_e(pair['a'])}</th><th>{_e(pair['b'])}</th></tr>{rows}</table>"


def _examples_table(pair: Mapping[str, Any], which: str) -> str:
    rows = pair["disagreements"][which]
    if not rows:
        return "<p class=note>None.</p>"
    body = "".join(
        f"<tr><td><pre>{_e(r['dialogue'])}</pre><span class=ci>{_e(r['id'])} · {_e(r.get('n_turns') or '?')} utterances"
        f"</span></td><td>{_e(r['reference'])}</td>"
        f"<td class=pred>{_e(_clip(r['prediction_a']))}<span class=ci>ROUGE-L {r['rougeL_a']:.1f}</span></td>"
        f"<td class=pred>{_e(_clip(r['prediction_b']))}<span class=ci>ROUGE-L {r['rougeL_b']:.1f}</span></td>"
        f"<td class='num nowrap'>{r['diff']:+.1f}</td></tr>" for r in rows)
    return (f"<table class=samples><tr><th>dialogue</th><th>reference</th><th>{_e(pair['a'])} (A)</th>"
            f"<th>{_e(pair['b'])} (B)</th><th class=nowrap>B − A</th></tr>{body}</table>")


def _quality_table(systems: Mapping[str, Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><b>{_e(n)}</b><span class=ci>{_e(s.get('predictions', ''))}</span></td>"
        f"<td class=num>{_pct(s.get('capped_share'))}</td><td class=num>{_pct(s.get('repetition_share'))}</td>"
        f"<td>{_e(s.get('model') or '–')}</td></tr>" for n, s in systems.items())
    return ("<table><tr><th>system (predictions read)</th><th>cut at max_new_tokens</th>"
            f"<th>repetition loops</th><th>model</th></tr>{rows}</table>")


def render_compare(result: Mapping[str, Any], plot: Path | None = None) -> str:
    from flant5_lib.compare import verdict

    systems = result["systems"]
    names = list(systems)
    verdicts = "".join(f"<li>{_e(verdict(p['metrics']['rougeL'], p['a'], p['b']))}</li>" for p in result["pairs"])
    sections = [("Verdict", f"<ul>{verdicts}</ul><p class=note>Paired over the same {result['n']} examples: 95% "
                            f"percentile bootstrap ({result['samples']} resamples) and a two-sided sign-flip "
                            f"permutation test ({result['permutations']} flips). Bold: p &lt; 0.05 and an interval "
                            "that excludes 0.</p>")]
    for pair in result["pairs"]:
        sections.append((f"{pair['b']} against {pair['a']}", _pair_table(pair)))
    if plot is not None and plot.is_file():
        sections.append(("Differences", f"<figure class=wide>{_img(plot)}<figcaption>Paired 95% intervals (thick) are "
                                        "narrower than unpaired ones (thin) where the two systems find the same "
                                        f"dialogues easy or hard — <a href='{_e(plot.name)}'>{_e(plot.name)}</a>"
                                        "</figcaption></figure>"))
    sections.append(("Every system", rouge_table_html(systems) + _quality_table(systems)))
    for pair in result["pairs"]:
        sections.append((f"By dialogue size: {pair['b']} − {pair['a']}", _buckets_table(pair)))
        sections.append((f"Parameters that differ: {pair['a']} → {pair['b']}", _params_table(pair)))
        sections.append((f"Where {pair['b']} beats {pair['a']} most (ROUGE-L)", _examples_table(pair, "b_better")))
        sections.append((f"Where {pair['a']} beats {pair['b']} most (ROUGE-L)", _examples_table(pair, "a_better")))
    method = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in result["method"].items())
    sections.append(("Method", f"<ul>{method}</ul><p class=note>Raw figures: <a href='compare.json'>compare.json</a>"
                               "</p>"))
    body = "".join(f"<h2>{_e(t)}</h2>{c}" for t, c in sections)
    title = "Comparison · " + " vs ".join(names)
    split = f"{result['split']} split · " if result.get("split") else ""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main><h1>{_e(title)}</h1>"
        f"<p class=sub>{split}{result['n']} examples · baseline {_e(result['baseline'])} · {_e(result['created_at'])}</p>"
        f"{body}</main></body></html>\n"
    )


def write_compare(result: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """compare.json, paired_differences.png and compare.html in `out_dir`; returns the page's path."""
    from flant5_lib.compare import write_compare_json
    from flant5_lib.fileio import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_compare_json(result, out)
    plot = plot_differences(result, out / PLOT)
    page = write_text(out / "compare.html", render_compare(result, plot))
    log.info("wrote %s", page)
    return page


def default_out_dir(labels: Sequence[str]) -> Path:
    """runs/compare/<A>-vs-<B>[...]: one folder per comparison, named by its systems."""
    import re

    name = "-vs-".join(re.sub(r"[^\w.-]+", "_", label).strip("_") for label in labels)
    return Path("runs") / "compare" / name[:120]


def compare_runs(
    systems: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None, *, samples: int = 1000,
    permutations: int | None = None, seed: int = 42, n_examples: int = 5,
) -> dict[str, Any]:
    """Read, align and compare the systems (the first is the baseline); write compare.json and compare.html into
    `out_dir` (default runs/compare/<A>-vs-<B>). The result is compare.json's content plus `out_dir`."""
    from flant5_lib import compare as C

    loaded = C.load_systems(systems)
    result = C.compare_systems(loaded, samples=samples, permutations=permutations or C.PERMUTATIONS, seed=seed,
                               n_examples=n_examples)
    out = Path(out_dir) if out_dir is not None else default_out_dir([s.label for s in loaded])
    write_compare(result, out)
    return {**result, "out_dir": str(out)}


def resolve_systems(systems: str | Sequence[str], run_dir: str | os.PathLike[str]) -> list[str]:
    """Notebook 06's `systems`: comma-separated; a bare name is <run_dir>/eval/<name>, a path or gs:// URI is as given."""
    items = [s.strip() for s in systems.split(",")] if isinstance(systems, str) else [str(s) for s in systems]
    return [str(Path(run_dir) / "eval" / s) if "/" not in s and not s.endswith(".jsonl") else s for s in items if s]


def difference_table(result: Mapping[str, Any]) -> Any:
    """One row per pair and metric: A, B, B - A, paired and unpaired 95% intervals, B's win share, p (a DataFrame)."""
    import pandas as pd

    rows = [{"B vs A": f"{p['b']} vs {p['a']}", "metric": LABELS[k], "A": m["a"], "B": m["b"], "B - A": m["diff"],
             "paired 95% CI": f"{m['ci'][0]:+.2f} to {m['ci'][1]:+.2f}",
             "unpaired 95% CI": f"{m['unpaired_ci'][0]:+.2f} to {m['unpaired_ci'][1]:+.2f}",
             "B wins": f"{100 * m['b_wins_share']:.1f}%", "p": f"{m['p_value']:.4f}"}
            for p in result["pairs"] for k, m in ((k, p["metrics"][k]) for k in ROUGE_KEYS)]
    return pd.DataFrame(rows).round(2)


def disagreement_table(result: Mapping[str, Any], which: str = "b_better", pair: int = 0) -> Any:
    """The examples where B beats A most ('b_better') or A beats B most ('a_better'), side by side (a DataFrame)."""
    import pandas as pd

    from flant5_lib.errors import UserError

    if which not in ("b_better", "a_better"):
        raise UserError(f"which={which!r}: choose b_better or a_better")
    p = result["pairs"][pair]
    cols = {"id": "id", "dialogue": "dialogue", "reference": "reference", "prediction_a": p["a"], "rougeL_a":
            f"ROUGE-L {p['a']}", "prediction_b": p["b"], "rougeL_b": f"ROUGE-L {p['b']}", "diff": "B - A"}
    return pd.DataFrame([{v: r[k] for k, v in cols.items()} for r in p["disagreements"][which]], columns=list(cols.values()))


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The terminal's view: one line per pair and metric."""
    lines = [f"{result['n']} examples; paired bootstrap ({result['samples']} resamples), sign-flip test "
             f"({result['permutations']} flips)"]
    for pair in result["pairs"]:
        lines.append(f"{pair['b']} - {pair['a']}:")
        for k in ROUGE_KEYS:
            m = pair["metrics"][k]
            lines.append(f"  {LABELS[k]:<11} {m['a']:6.2f} -> {m['b']:6.2f}  diff {m['diff']:+6.2f}  95% CI "
                         f"{m['ci'][0]:+6.2f} to {m['ci'][1]:+6.2f}  B wins {100 * m['b_wins_share']:5.1f}%  "
                         f"p = {m['p_value']:.4f}")
    from flant5_lib.compare import verdict

    lines += [verdict(p["metrics"]["rougeL"], p["a"], p["b"]) for p in result["pairs"]]
    return lines
