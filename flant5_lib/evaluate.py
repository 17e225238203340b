"""Score a model (or an extractive baseline) on one split and write <run_dir>/eval/<name>/.

Each evaluation folder holds metrics.json, predictions.jsonl and PNG plots. The folder is built in a
temporary sibling and renamed at the end, so a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flant5_lib import metrics as M
from flant5_lib.config import SPLITS
from flant5_lib.errors import DataError, ModelError, UserError

if TYPE_CHECKING:
    import pandas as pd

    from flant5_lib.config import Params

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "google/flan-t5-base"
# The settings recorded under "params" in metrics.json: what shaped the inputs, the generation and the scores.
RECORDED_FIELDS = (
    "source_prefix", "turn_separator", "max_source_length", "num_beams", "max_new_tokens", "length_penalty",
    "no_repeat_ngram_size", "repetition_penalty", "per_device_eval_batch_size", "tokenizer_name", "max_eval_samples",
    "bootstrap_samples", "seed",
)
CAPPED_WARN_SHARE = 0.01  # over 1% of summaries cut by max_new_tokens: ROUGE is scored on truncated texts


# --- data ------------------------------------------------------------------------------------------


def load_eval_records(params: Params, split: str) -> list[dict[str, str]]:
    """The split's rows as dicts; a dataset lacking *other* splits is fine for evaluation."""
    from flant5_lib.data import load_from_params

    if split not in SPLITS:
        raise DataError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    if params.missing_split == "error":  # evaluation only needs this one split (e.g. SAMSum's val/test folder)
        params = params.with_overrides(missing_split="skip")
    ds = load_from_params(params, split)
    if len(ds) == 0:
        raise DataError(f"dataset {params.dataset!r}: the {split} split is empty")
    return [dict(r) for r in ds]


def _check_model_spec(spec: str) -> None:
    """Refuse a missing local folder at once; otherwise transformers spends ~50 s retrying the hub offline."""
    if spec == "tiny" or spec.startswith("gs://") or Path(spec).expanduser().exists():
        return
    if _HUB_ID.fullmatch(spec) and not Path(spec.split("/")[0]).is_dir():  # "runs/model" with runs/ here is a path
        return
    raise ModelError(f"model {spec}: no such model folder (train one with `flant5 train`, or pass a hub id owner/name)")


# --- scoring -----------------------------------------------------------------------------------------


def score_predictions(
    records: Sequence[Mapping[str, str]], predictions: Sequence[str], params: Params
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ROUGE summary (means, intervals, buckets, repetition share) and the per-example rows for predictions.jsonl."""
    from flant5_lib.data import split_turns

    refs = [r["summary"] for r in records]
    per_example = M.per_example_rouge(predictions, refs)
    turns = [len(split_turns(r["dialogue"])) for r in records]
    summary = M.summarize_scores(per_example, turns, samples=params.bootstrap_samples, seed=params.seed)
    loops = [M.repetition_loop(p) for p in predictions]
    summary["repetition_share"] = sum(x is not None for x in loops) / max(len(loops), 1)
    summary["repetition_rule"] = M.LOOP_RULE
    rows = [
        {"id": r["id"], "dialogue": r["dialogue"], "reference": r["summary"], "prediction": p,
         "n_turns": t, "bucket": M.size_bucket(t), **{k: round(s[k], 4) for k in M.ROUGE_KEYS}, "repetition": loop}
        for r, p, t, s, loop in zip(records, predictions, turns, per_example, loops)
    ]
    return summary, rows


def _words(texts: Sequence[str]) -> float:
    return sum(len(t.split()) for t in texts) / max(len(texts), 1)


def _base_info(params: Params, split: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": params.dataset,
        "split": split,
        "rouge_settings": {"use_stemmer": True, "score": "mean F1 x 100", "lsum_sentence_splitter": M.SENTENCE_SPLITTER,
                           "ci": f"95% percentile bootstrap, {params.bootstrap_samples} resamples, seed {params.seed}"},
        "bucket_rule": M.BUCKET_RULE,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def baseline_metrics(params: Params, method: str, records: Sequence[Mapping[str, str]], split: str) -> tuple[dict, list]:
    """Metrics and prediction rows of one extractive baseline (no model, a few seconds on SAMSum test)."""
    from flant5_lib.baselines import get_baseline

    fn = get_baseline(method)
    preds = [fn(r["dialogue"]) for r in records]
    summary, rows = score_predictions(records, preds, params)
    words = _words(preds)
    result = {**_base_info(params, split, method), "model": None, "method": method, **summary,
              "gen_len": words, "gen_len_unit": "words", "gen_words": words, "capped_share": None}
    return result, rows


# --- writing ---------------------------------------------------------------------------------------------


def write_eval_dir(
    out_dir: str | os.PathLike[str], result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
    compare: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """metrics.json, predictions.jsonl and the plots, all renamed into place together."""
    from flant5_lib import plots
    from flant5_lib.fileio import atomic_path, write_json, write_jsonl

    name = result["name"]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / "metrics.json", result)
        write_jsonl(tmp / "predictions.jsonl", list(rows))
        plots.plot_rouge_comparison({name: result, **(compare or {})}, tmp / "rouge_comparison.png")
        plots.plot_rouge_by_bucket({name: result, **(compare or {})}, tmp / "rouge_by_bucket.png")
        plots.plot_score_histogram(
            {k: [r[k] for r in rows] for k in ("rouge1", "rougeL")}, tmp / "score_histogram.png",
            title=f"Per-dialogue ROUGE F1, {name} ({result['split']}, n={result['n']})",
        )
    log.info("wrote %s", out_dir)
    return Path(out_dir)


def model_selection(model_dir: str | os.PathLike[str], reported_split: str) -> dict[str, Any]:
    """Which split chose this model (from the training run's train_metrics.json in the model folder) beside the split
    scored here. Picking a checkpoint on the split you then report inflates the score: that is flagged."""
    path = Path(model_dir) / "train_metrics.json"
    train: dict[str, Any] = {}
    if path.is_file():
        try:
            train = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; model selection unknown", path)
    selected = train.get("selection_split")
    info = {
        "selection_split": selected,
        "reported_split": reported_split,
        "selection_metric": train.get("metric_for_best_model"),
        "selected_step": train.get("published_step"),
    }
    if selected is not None and selected == reported_split:
        info["selection_warning"] = f"the model was selected on the {selected} split it is scored on: the score is optimistic"
        log.warning("%s: %s", model_dir, info["selection_warning"])
    return info


def default_out_dir(params: Params, name: str) -> Path:
    return Path(params.run_dir) / "eval" / name


# --- public API ------------------------------------------------------------------------------------------


def run_baseline(
    params: Params, method: str, *, split: str | None = None, out_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Score Lead-3 or Longest-3 and write eval/<method>/ like a model evaluation (gen_len in words)."""
    from flant5_lib.baselines import get_baseline

    get_baseline(method)  # unknown method: fail before reading data
    split = split or params.eval_split
    records = load_eval_records(params, split)
    result, rows = baseline_metrics(params, method, records, split)
    write_eval_dir(out_dir or default_out_dir(params, method), result, rows)
    return result


def evaluate_model(
    params: Params,
    model_path: str | os.PathLike[str],
    *,
    split: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    name: str = "finetuned",
) -> dict[str, Any]:
    """Generate summaries for a split, score them, compare with the baselines in params.baselines, write eval/<name>/."""
    from flant5_lib.inference import generate_summaries_capped
    from flant5_lib.modeling import load_model_and_tokenizer, pick_device, resolve_model_path
    from flant5_lib.preprocess import load_preprocessing

    split = split or params.eval_split
    spec = str(model_path)
    _check_model_spec(spec)
    records = load_eval_records(params, split)  # data errors before the (slow) model load
    model_spec = resolve_model_path(params, spec)
    device = pick_device()
    model, tokenizer = load_model_and_tokenizer(model_spec, params.tokenizer_name, device)
    params = load_preprocessing(model_spec, params)  # inputs prepared as in training; the model's generation defaults
    dialogues = [r["dialogue"] for r in records]
    log.info("generating %d summaries with %s on %s", len(dialogues), model_spec, device)
    t0 = time.perf_counter()
    preds, capped = generate_summaries_capped(model, tokenizer, dialogues, params, progress=True)
    seconds = time.perf_counter() - t0
    summary, rows = score_predictions(records, preds, params)
    for row, cut in zip(rows, capped):
        row["capped"] = cut
    capped_share = sum(capped) / len(capped)
    if capped_share > CAPPED_WARN_SHARE:
        log.warning("%.1f%% of summaries reached max_new_tokens=%d and were cut; raise max_new_tokens",
                    100 * capped_share, params.max_new_tokens)
    gen_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in preds]
    baselines = {m: baseline_metrics(params, m, records, split)[0] for m in params.baselines}
    result = {
        **_base_info(params, split, name),
        "model": str(model_path),
        **summary,
        "gen_len": sum(gen_tokens) / len(gen_tokens),
        "gen_len_unit": "tokens of the model's tokenizer (predictions re-tokenised, no special tokens)",
        "gen_words": _words(preds),
        "capped_share": capped_share,
        "capped_rule": f"no end-of-sequence token within max_new_tokens={params.max_new_tokens}",
        **model_selection(model_spec, split),
        "params": {k: getattr(params, k) for k in RECORDED_FIELDS},
        "device": str(device),
        "generation_seconds": round(seconds, 3),
        "dialogues_per_second": round(len(preds) / seconds, 3) if seconds > 0 else None,
        "baselines": {m: {k: v for k, v in b.items() if k not in ("rouge_settings", "bucket_rule")} for m, b in baselines.items()},
    }
    write_eval_dir(out_dir or default_out_dir(params, name), result, rows, compare=baselines)
    return result


# --- reading results (notebooks, index page) ---------------------------------------------------------------


def load_metrics(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """{name: metrics} from <run_dir>/eval/*/metrics.json.

    Baselines embedded in a model's metrics.json fill in for any baseline without its own folder.
    """
    out: dict[str, dict[str, Any]] = {}
    embedded: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(run_dir, "eval").glob("*/metrics.json")):
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{f}: not valid JSON ({err.msg}); re-run the evaluation") from None
        out[m.get("name") or f.parent.name] = m
        for b, bm in (m.get("baselines") or {}).items():
            embedded.setdefault(b, bm)
    for b, bm in embedded.items():
        out.setdefault(b, bm)
    return out


def load_predictions(eval_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of <eval_dir>/predictions.jsonl."""
    path = Path(eval_dir) / "predictions.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `flant5 evaluate` or `flant5 baseline` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def comparison_table(metrics_by_name: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per system: n, ROUGE means, ROUGE-L interval, generated length."""
    import pandas as pd

    rows = []
    for name, m in metrics_by_name.items():
        lo, hi = (m.get("ci") or {}).get("rougeL", (float("nan"), float("nan")))
        rows.append({
            "system": name, "n": m.get("n"),
            **{k: round(float(m.get(k, float("nan"))), 2) for k in M.ROUGE_KEYS},
            "rougeL 95% CI": f"{lo:.1f}-{hi:.1f}",
            "gen_len": round(float(m.get("gen_len", float("nan"))), 1),
            "gen_len_unit": "tokens" if str(m.get("gen_len_unit", "")).startswith("tokens") else m.get("gen_len_unit"),
        })
    return pd.DataFrame(rows).set_index("system") if rows else pd.DataFrame()


def sample_table(
    predictions: Sequence[Mapping[str, Any]], n: int = 5, which: str = "best", *, metric: str = "rougeL", seed: int = 0
) -> pd.DataFrame:
    """The n best, worst or random examples by a per-example metric (for reading outputs in notebook 03)."""
    import random

    import pandas as pd

    if which not in ("best", "worst", "random"):
        raise UserError(f"which={which!r}: choose best, worst or random")
    rows = list(predictions)
    if which == "random":
        picked = random.Random(seed).sample(rows, min(n, len(rows)))
    else:
        picked = sorted(rows, key=lambda r: r[metric], reverse=which == "best")[:n]
    cols = ["id", "dialogue", "reference", "prediction", metric]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in picked], columns=cols)
