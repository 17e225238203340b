"""The run folder's front page: metrics.json (every system's ROUGE) and a self-contained index.html.

The page embeds its plots (base64 PNG) so it can be mailed or attached alone; executed notebooks and
raw files are linked relatively, so the links work wherever the run folder is copied.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flant5_lib.metrics import ROUGE_KEYS

log = logging.getLogger(__name__)

SYSTEM_ORDER = ("finetuned", "untuned", "lead3", "longest3")
SYSTEM_LABELS = {
    "finetuned": "Fine-tuned model",
    "untuned": "Base model, not fine-tuned",
    "lead3": "Lead-3 (first 3 utterances)",
    "longest3": "Longest-3 (3 longest utterances)",
}
# (candidate paths, caption, full width?) in reading order; the first existing file of each group is shown.
Plot = tuple[tuple[str, ...], str, bool]
RESULT_PLOTS: list[Plot] = [
    (("eval/rouge_comparison.png", "eval/finetuned/rouge_comparison.png"), "ROUGE of every system, 95% bootstrap intervals", False),
    (("model/loss_curve.png", "vertex/model/loss_curve.png"),
     "Training and validation loss (log scale, epochs dotted); validation ROUGE during training when it was computed", True),
    (("eval/rouge_by_bucket.png", "eval/finetuned/rouge_by_bucket.png"), "ROUGE by dialogue size (utterances)", True),
    (("eval/finetuned/score_histogram.png",), "Per-dialogue ROUGE of the fine-tuned model", False),
]
DATA_PLOTS: list[Plot] = [
    (("explore/lengths_tokens.png",), "Dialogue and summary lengths in tokens, with the suggested limits (red)", True),
    (("explore/lengths_words.png",), "Dialogue and summary lengths in words", True),
    (("explore/turns.png",), "Utterances per dialogue (dotted: size-bucket edges)", False),
    (("explore/buckets.png",), "Dialogues per size bucket", False),
    (("explore/speakers.png",), "Speakers per dialogue", False),
]

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.sub{color:#5b6474;margin:0 0 18px}.badge{display:inline-block;padding:2px 9px;border-radius:10px;font-size:13px;
font-weight:600;color:#fff;vertical-align:middle}.ok{background:#2e8540}.failed{background:#c0392b}.running,.interrupted,.pending{background:#b7791f}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.06);margin:6px 0 8px}
th,td{overflow-wrap:anywhere;padding:7px 11px;border-bottom:1px solid #eceef2;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600;font-size:13px}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:700;color:#1a5fb4}.ci{display:block;color:#7a8394;font-size:11.5px;font-weight:400}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
figure.wide{grid-column:1/-1}figure.wide img{max-width:920px;display:block;margin:0 auto}figure{margin:0;background:#fff;padding:10px;box-shadow:0 1px 2px rgba(0,0,0,.06)}figure img{width:100%;height:auto}
figcaption{color:#5b6474;font-size:13px;margin-top:4px}pre{white-space:pre-wrap;margin:0;font:12.5px/1.4 ui-monospace,monospace}
.samples td{max-width:330px}td.pred{white-space:pre-line}.samples pre{max-height:230px;overflow:auto}.err{color:#c0392b;overflow-wrap:anywhere}.note{color:#5b6474;font-size:13px}
details{margin:6px 0}summary{cursor:pointer;color:#1a5fb4}code{background:#eef1f5;padding:1px 4px;border-radius:3px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;padding:10px 16px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card b{display:block;font-size:22px}.card span{color:#5b6474;font-size:12.5px}
.flag{display:inline-block;margin:3px 4px 0 0;padding:1px 7px;border-radius:9px;font-size:11.5px;font-weight:600;
background:#fdecea;color:#a12a1e}.banner{background:#fff6dd;border-left:4px solid #b7791f;padding:8px 14px;margin:10px 0}
.warn{background:#fdecea;border-left:4px solid #c0392b;padding:8px 14px;margin:8px 0}
.side{display:flex;gap:22px;flex-wrap:wrap;align-items:flex-start}.side .pub td,.side .pub th{font-size:13px;padding:5px 9px}.pub th{white-space:nowrap}
table.runs{width:100%}table.runs td.nowrap,table.runs th.nowrap{white-space:nowrap;width:1%}tr.errrow td{border-top:0;padding-top:0}
td.nowrap,th.nowrap{white-space:nowrap;overflow-wrap:normal}h3{font-size:16px;margin:22px 0 6px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _ordered(metrics: Mapping[str, Any]) -> list[str]:
    return [n for n in SYSTEM_ORDER if n in metrics] + sorted(n for n in metrics if n not in SYSTEM_ORDER)


def collect_metrics(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """{system: metrics} from eval/*/metrics.json (read by `evaluate.load_metrics`); {} when nothing was evaluated."""
    from flant5_lib.errors import UserError
    from flant5_lib.evaluate import load_metrics

    try:
        return load_metrics(run_dir)
    except UserError as err:
        log.warning("%s", err)
        return {}


def write_run_metrics(run_dir: str | os.PathLike[str]) -> Path | None:
    """<run_dir>/metrics.json: one row per system (ROUGE means, 95% intervals, n, generated length)."""
    from flant5_lib.fileio import write_json

    metrics = collect_metrics(run_dir)
    if not metrics:
        return None
    systems = {}
    for name in _ordered(metrics):
        m = metrics[name]
        systems[name] = {
            **{k: m.get(k) for k in ROUGE_KEYS}, "ci": m.get("ci"), "n": m.get("n"), "gen_len": m.get("gen_len"),
            "gen_len_unit": m.get("gen_len_unit"), "dataset": m.get("dataset"), "split": m.get("split"),
            "model": m.get("model"), "buckets": m.get("buckets"),
        }
    return write_json(Path(run_dir) / "metrics.json", {"systems": systems})


# --- HTML pieces -----------------------------------------------------------------------------------

# Published ROUGE on the SAMSum test split (819 dialogues), for a run on SAMSum. The SAMSum paper's "ROUGE-L" is
# summary-level, i.e. this page's ROUGE-Lsum. (system, R1, R2, RL or None, RLsum or None, source)
PUBLISHED_SAMSUM = [
    ("Lead-3", 31.40, 8.68, None, 29.42, "Gliwa et al. 2019 (SAMSum paper), Table 2"),
    ("Longest-3", 32.46, 10.27, None, 29.92, "Gliwa et al. 2019 (SAMSum paper), Table 2"),
    ("flan-t5-base fine-tuned", 47.24, 23.51, 39.63, 43.35,
     "flan-t5-base-samsum model card (the HF recipe; summaries capped at 20 tokens, checkpoint picked on test)"),
]


def is_samsum(dataset: str | None) -> bool:
    """The real SAMSum (hub id, folder or archive), not the synthetic look-alike."""
    d = str(dataset or "").lower()
    return "samsum" in d and not d.startswith("synthetic")


def is_synthetic(dataset: str | None) -> bool:
    return str(dataset or "").startswith("synthetic")


SAMSUM_TEST_SIZE = 819


def published_html(dataset: str | None, n: int | None = None) -> str:
    if not is_samsum(dataset):
        return ""
    partial = (f"<p class=warn>This run scored {n} dialogues, not the whole test split ({SAMSUM_TEST_SIZE}): its "
               "figures are not comparable with these.</p>" if n and n != SAMSUM_TEST_SIZE else "")
    rows = "".join(
        f"<tr><td>{_e(name)}</td>" + "".join(f"<td class=num>{v:.2f}</td>" if v is not None else "<td>–</td>" for v in (r1, r2, rl, rlsum))
        + f"<td class=note>{_e(src)}</td></tr>" for name, r1, r2, rl, rlsum, src in PUBLISHED_SAMSUM)
    return ("<div><p class=note><b>Published</b>, SAMSum test split (819 dialogues)</p><table class=pub><tr><th>system</th>"
            "<th>ROUGE-1</th><th>ROUGE-2</th><th>ROUGE-L</th><th>ROUGE-Lsum</th><th>source</th></tr>"
            f"{rows}</table><p class=note>The paper's ROUGE-L is summary-level: compare it with ROUGE-Lsum here. Scores are "
            f"comparable only on the full test split (max_eval_samples unset).</p>{partial}</div>")


def synthetic_banner(dataset: str | None) -> str:
    if not is_synthetic(dataset):
        return ""
    return (f"<p class=banner><b>Synthetic demo data</b> (<code>{_e(dataset)}</code>): template-made dialogues in SAMSum's "
            "shape, built offline. The scores show that the chain works end to end, not how good a summariser is; for "
            "real figures run <code>params/samsum-flan-t5-base.yaml</code>.</p>")


def quality_warnings_html(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Capped summaries (max_new_tokens reached) above 1%, and repetition loops, per system."""
    from flant5_lib.evaluate import CAPPED_WARN_SHARE

    out = []
    for name in _ordered(metrics):
        m = metrics[name]
        capped = m.get("capped_share")
        if capped is not None and float(capped) > CAPPED_WARN_SHARE:
            limit = (m.get("params") or {}).get("max_new_tokens", "max_new_tokens")
            out.append(f"<p class=warn><b>{_e(name)}</b>: {100 * float(capped):.1f}% of summaries reached max_new_tokens="
                       f"{_e(limit)} and were cut, so ROUGE scores truncated texts; raise max_new_tokens.</p>")
        loops = m.get("repetition_share")
        if loops and float(loops) > CAPPED_WARN_SHARE and name == "finetuned":
            out.append(f"<p class=warn><b>{_e(name)}</b>: {100 * float(loops):.1f}% of summaries contain a repetition "
                       "loop (see the worst examples below).</p>")
    return "".join(out)


def rouge_table_html(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    if not metrics:
        return "<p class=note>No evaluation in this run yet (notebook 03 writes it).</p>"
    names = _ordered(metrics)
    best = {k: max(float(metrics[n].get(k) or 0) for n in names) for k in ROUGE_KEYS}
    head = "".join(f"<th>{k.replace('rouge', 'ROUGE-')}</th>" for k in ROUGE_KEYS)
    rows = []
    for n in names:
        m = metrics[n]
        cells = []
        for k in ROUGE_KEYS:
            v = m.get(k)
            lo_hi = (m.get("ci") or {}).get(k)
            ci = f"<span class=ci>{lo_hi[0]:.1f} – {lo_hi[1]:.1f}</span>" if lo_hi else ""
            cls = "num best" if v is not None and float(v) == best[k] and len(names) > 1 else "num"
            cells.append(f"<td class='{cls}'>{float(v):.2f}{ci}</td>" if v is not None else "<td>–</td>")
        words = m.get("gen_words", m.get("gen_len") if m.get("gen_len_unit") == "words" else None)
        tokens = m.get("gen_len") if str(m.get("gen_len_unit", "")).startswith("tokens") else None
        words_s = f"{float(words):.1f}" if words is not None else "–"
        tokens_s = f"{float(tokens):.1f}" if tokens is not None else "–"
        rows.append(f"<tr><td><b>{_e(n)}</b><span class=ci>{_e(SYSTEM_LABELS.get(n, ''))}</span></td>{''.join(cells)}"
                    f"<td class=num>{_e(m.get('n', ''))}</td><td class=num>{words_s}</td><td class=num>{tokens_s}</td></tr>")
    any_m = metrics[names[0]]
    caption = (f"<p class=note>{_e(any_m.get('dataset', ''))}, {_e(any_m.get('split', ''))} split. Mean F1 × 100; "
               "small numbers: 95% bootstrap interval; bold: best per column.</p>")
    table = (f"<table><tr><th>system</th>{head}<th>n</th><th>summary words</th><th>summary tokens</th></tr>{''.join(rows)}"
             f"</table>{caption}")
    published = published_html(any_m.get("dataset"), any_m.get("n") if any_m.get("split") == "test" else None)
    return f"<div class=side><div>{table}</div>{published}</div>" if published else table


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_e(path.name)}' src='data:image/png;base64,{data}'>"


def plots_html(run_dir: Path, plots: Sequence[Plot] = RESULT_PLOTS) -> str:
    figs = []
    for candidates, caption, wide in plots:
        path = next((run_dir / c for c in candidates if (run_dir / c).is_file()), None)
        if path is not None:
            rel = path.relative_to(run_dir).as_posix()
            figs.append(f"<figure{' class=wide' if wide else ''}>{_img(path)}<figcaption>{_e(caption)} — <a href='{_e(rel)}'>{_e(rel)}</a>"
                        "</figcaption></figure>")
    return f"<div class=grid>{''.join(figs)}</div>" if figs else "<p class=note>No plots yet.</p>"


def _predictions(run_dir: Path, name: str) -> list[dict[str, Any]]:
    path = run_dir / "eval" / name / "predictions.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _clip(text: str, limit: int = 240) -> str:
    """An untrained model can emit max_new_tokens of one repeated piece: keep the table readable."""
    if len(text) <= limit and text.count("\n") < 6:
        return text
    flat = " ".join(text.split())
    return flat if len(flat) <= limit // 2 else flat[: limit // 2].rstrip() + " …"


def spread(n_items: int, n: int) -> list[int]:
    """`n` indices evenly spaced over 0..n_items-1, both ends included: rank 1 and the last rank are always shown."""
    if n_items <= 0 or n <= 0:
        return []
    if n >= n_items:
        return list(range(n_items))
    if n == 1:
        return [0]
    return sorted({round(i * (n_items - 1) / (n - 1)) for i in range(n)})


def _flags(r: Mapping[str, Any]) -> str:
    from flant5_lib.metrics import repetition_loop

    loop = r["repetition"] if "repetition" in r else repetition_loop(r.get("prediction", ""))
    flags = [f"<span class=flag title='repetition loop'>repeats “{_e(_clip(str(loop), 40))}”</span>"] if loop else []
    if r.get("capped"):
        flags.append("<span class=flag title='no end-of-sequence within max_new_tokens'>cut at max_new_tokens</span>")
    return "".join(flags)


def _sample_rows(picked: Sequence[tuple[int, Mapping[str, Any]]], others: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for rank, r in picked:
        extra = "".join(
            f"<td class=pred>{_e(_clip(o.get(r['id'], {}).get('prediction', '')))}"
            f"<span class=ci>ROUGE-L {float(o.get(r['id'], {}).get('rougeL', 0)):.1f}</span></td>" for o in others.values()
        )
        out.append(f"<tr><td class='num nowrap'>{rank}</td><td><pre>{_e(r['dialogue'])}</pre><span class=ci>{_e(r['id'])} · "
                   f"{_e(r.get('n_turns', '?'))} utterances</span></td><td>{_e(r['reference'])}</td><td class=pred>"
                   f"{_e(_clip(r['prediction']))}<span class=ci>ROUGE-L {float(r.get('rougeL', 0)):.1f}</span>{_flags(r)}</td>"
                   f"{extra}</tr>")
    return "".join(out)


def samples_html(run_dir: Path, n: int = 6, n_worst: int = 5) -> str:
    """Dialogue, reference and each system's summary at evenly spaced ranks of fine-tuned ROUGE-L (best and worst
    included), then the worst `n_worst` with their repetition and max_new_tokens flags."""
    rows = _predictions(run_dir, "finetuned")
    if not rows:
        return "<p class=note>No predictions yet.</p>"
    others = {name: {r["id"]: r for r in _predictions(run_dir, name)} for name in ("untuned", "lead3")}
    others = {k: v for k, v in others.items() if v}
    ranked = sorted(rows, key=lambda r: r.get("rougeL", 0), reverse=True)
    head = ("<tr><th class=nowrap>rank</th><th>dialogue</th><th>reference</th><th>fine-tuned (ROUGE-L)</th>"
            + "".join(f"<th>{_e(k)}</th>" for k in others) + "</tr>")
    picked = [(i + 1, ranked[i]) for i in spread(len(ranked), n)]
    worst = [(i + 1, ranked[i]) for i in range(len(ranked) - 1, max(len(ranked) - 1 - n_worst, -1), -1)]
    flagged = sum(1 for r in rows if _flags(r))
    note = (f"<p class=note>{len(picked)} of {len(rows)} test dialogues at evenly spaced ranks of the fine-tuned model's "
            f"ROUGE-L, from rank 1 (best) to rank {len(rows)} (worst).</p>")
    worst_note = (f"<h3>The worst {len(worst)}</h3><p class=note>Lowest fine-tuned ROUGE-L first. {flagged} of {len(rows)} "
                  "summaries are flagged (repetition loop or cut at max_new_tokens).</p>")
    return (f"{note}<table class=samples>{head}{_sample_rows(picked, others)}</table>"
            f"{worst_note}<table class=samples>{head}{_sample_rows(worst, others)}</table>")


def data_html(run_dir: Path) -> str:
    stats = _read_json(run_dir / "explore" / "stats.json")
    if not stats:
        return "<p class=note>No exploration in this run (notebook 00 writes it).</p>"
    cards = [f"<div class=card><b>{_e(s.get('n'))}</b><span>{_e(name)} dialogues</span></div>"
             for name, s in stats.get("splits", {}).items()]
    g = stats.get("suggested")
    if g:
        cards.append(f"<div class=card><b>{g['max_source_length']} / {g['max_target_length']}</b><span>suggested max source / "
                     f"target tokens (p{g['source_percentile']:g} / p{g['target_percentile']:g} of {_e(g['basis_split'])})</span></div>")
    return (f"<p class=note>Dataset: <code>{_e(stats.get('dataset'))}</code></p><div class=cards>{''.join(cards)}</div>"
            f"<p></p>{plots_html(run_dir, DATA_PLOTS)}")


def notebooks_html(run_dir: Path, info: Mapping[str, Any]) -> str:
    """Status and time stay in narrow unbroken columns; an error gets a full-width row of its own below its notebook."""
    rows = []
    for nb in info.get("notebooks", []):
        rel = Path(nb["output"])
        rel_s = rel.relative_to(run_dir).as_posix() if rel.is_absolute() and rel.is_relative_to(run_dir) else str(rel)
        link = f"<a href='{_e(rel_s)}'>{_e(nb['name'])}</a>" if (run_dir / rel_s).is_file() else _e(nb["name"])
        secs = f"{nb['seconds']:.1f} s" if nb.get("seconds") is not None else "–"
        rows.append(f"<tr><td>{link}</td><td class=nowrap><span class='badge {_e(nb['status'])}'>{_e(nb['status'])}</span></td>"
                    f"<td class='num nowrap'>{secs}</td></tr>")
        if nb.get("error"):
            rows.append(f"<tr class=errrow><td colspan=3><div class=err>{_e(nb['error'])}</div></td></tr>")
    total = f"{info['seconds']:.1f} s" if info.get("seconds") is not None else "–"
    rows.append(f"<tr><th>total</th><th class=nowrap></th><th class='num nowrap'>{total}</th></tr>")
    return (f"<table class=runs><tr><th>notebook (executed copy)</th><th class=nowrap>status</th><th class=nowrap>time</th>"
            f"</tr>{''.join(rows)}</table>")


def vertex_html(run_dir: Path) -> str:
    files = sorted((run_dir / "vertex").glob("*.json")) if (run_dir / "vertex").is_dir() else []
    if not files:
        return "<p class=note>No Vertex AI resources recorded in this run.</p>"
    rows = []
    for name, label in (("training_job", "training job"), ("model", "Model Registry"), ("endpoint", "endpoint")):
        data = _read_json(run_dir / "vertex" / f"{name}.json") or {}
        if data.get("resource_name"):
            extra = data.get("state") or data.get("artifact_uri") or ""
            rows.append(f"<tr><td>{label}</td><td><code>{_e(data['resource_name'])}</code></td><td>{_e(extra)}</td></tr>")
    answer = (_read_json(run_dir / "vertex" / "predict_response.json") or {}).get("body") or {}
    preds = answer.get("predictions") if isinstance(answer, dict) else None
    if preds:
        rows.append(f"<tr><td>first online prediction</td><td colspan=2>{_e(_clip(str(preds[0])))}</td></tr>")
    table = f"<table>{''.join(rows)}</table>" if rows else ""
    items = " · ".join(f"<a href='{_e(f.relative_to(run_dir).as_posix())}'>{_e(f.name)}</a>" for f in files)
    return f"{table}<p class=note>Recorded requests and resources: {items}</p>"


def params_html(run_dir: Path, info: Mapping[str, Any]) -> str:
    import yaml

    explicit = yaml.safe_dump(info.get("overrides") or {}, sort_keys=False)
    full = run_dir / "params.yaml"
    full_s = full.read_text(encoding="utf-8") if full.is_file() else ""
    src = info.get("params_file") or "(defaults)"
    return (f"<p class=note>From <code>{_e(src)}</code> and --set; <a href='params.yaml'>params.yaml</a> holds every resolved "
            f"value.</p><pre>{_e(explicit)}</pre><details><summary>all parameters</summary><pre>{_e(full_s)}</pre></details>")


def render_index(run_dir: str | os.PathLike[str], info: Mapping[str, Any]) -> str:
    run_dir = Path(run_dir)
    metrics = collect_metrics(run_dir)
    status = info.get("status", "running")
    failed = [nb for nb in info.get("notebooks", []) if nb.get("status") == "failed"]
    alert = f"<p class=err><b>Stopped:</b> {_e(failed[0]['error'])}</p>" if failed else ""
    dataset = next((m.get("dataset") for m in metrics.values() if m.get("dataset")), None)
    if dataset is None:
        dataset = (_read_json(run_dir / "explore" / "stats.json") or {}).get("dataset")
    if dataset is None and (run_dir / "params.yaml").is_file():
        import yaml

        dataset = (yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8")) or {}).get("dataset")
    sections = [
        ("Results: ROUGE", quality_warnings_html(metrics) + rouge_table_html(metrics)),
        ("Plots", plots_html(run_dir)),
        ("Sample summaries", samples_html(run_dir)),
        ("Notebooks and timing", notebooks_html(run_dir, info)),
        ("Vertex AI", vertex_html(run_dir)),
        ("Data", data_html(run_dir)),
        ("Parameters", params_html(run_dir, info)),
    ]
    body = "".join(f"<h2>{_e(t)}</h2>{c}" for t, c in sections)
    title = f"Flan-T5 SAMSum run · {run_dir.name}"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{_e(title)} <span class='badge {_e(status)}'>{_e(status)}</span></h1>"
        f"<p class=sub>{_e(run_dir)} · started {_e(info.get('started_at', ''))} · finished {_e(info.get('finished_at') or '–')}</p>"
        f"{synthetic_banner(dataset)}{alert}{body}</main></body></html>\n"
    )


def write_index(run_dir: str | os.PathLike[str], info: Mapping[str, Any] | None = None) -> Path:
    """Write <run_dir>/index.html (atomically); `info` defaults to <run_dir>/run.json."""
    from flant5_lib.fileio import write_text

    run_dir = Path(run_dir)
    info = info if info is not None else (_read_json(run_dir / "run.json") or {})
    return write_text(run_dir / "index.html", render_index(run_dir, info))


def summary_lines(run_dir: str | os.PathLike[str], keys: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> list[str]:
    """A short ROUGE table for the terminal at the end of `flant5 run`."""
    metrics = collect_metrics(run_dir)
    lines = [f"{'system':<12}" + "".join(f"{k:>10}" for k in keys)] if metrics else []
    for n in _ordered(metrics):
        lines.append(f"{n:<12}" + "".join(f"{float(metrics[n].get(k) or 0):>10.2f}" for k in keys))
    return lines
