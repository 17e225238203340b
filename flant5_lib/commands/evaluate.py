"""`flant5 evaluate`: generate summaries for a split, score ROUGE with intervals, compare with baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flant5_lib.config import SPLITS, Params, load_params, parse_set


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by `evaluate` and `baseline`; they override the params file."""
    p.add_argument("--dataset", help="dataset spec (overrides params.dataset): synthetic[:N], a folder, corpus.7z, hub id, gs://")
    p.add_argument("--split", help="train, validation or test (overrides params.eval_split, default test)")
    p.add_argument("--out", help="output folder (default <run_dir>/eval/<name>)")
    p.add_argument("--params", help="YAML file of parameter overrides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one parameter (repeatable), e.g. num_beams=4 or summary_column=summary1")


def params_from_args(args: argparse.Namespace) -> Params:
    from flant5_lib.errors import DataError

    overrides: dict[str, Any] = parse_set(args.set)
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.split:
        if args.split not in SPLITS:
            raise DataError(f"--split {args.split!r}: must be one of {', '.join(SPLITS)}")
        overrides["eval_split"] = args.split
    return load_params(args.params, overrides)


def print_result(result: dict[str, Any], out: Path) -> None:
    scores = " ".join(f"{k}={result[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"))
    lo, hi = result["ci"]["rougeL"]
    print(f"{result['name']} on {result['dataset']} {result['split']} (n={result['n']}): {scores} "
          f"(rougeL 95% CI {lo:.2f}-{hi:.2f}) -> {out}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model's summaries with ROUGE (and the extractive baselines)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate a summary per dialogue of one split with the model's own preprocessing and generation settings (its\n"
        "flant5_params.yaml and generation_config.json; a value you set explicitly wins), then write metrics.json\n"
        "(ROUGE with 95% intervals, by dialogue size, repetition_share, capped_share, which split selected the model),\n"
        "predictions.jsonl and plots.",
        epilog="examples:\n  flant5 evaluate --model runs/latest/model --dataset ../shared/data/samsum/original --split test\n"
        "  flant5 evaluate --model runs/latest/model --params params/local-smoke.yaml --set num_beams=4 --name beam4",
    )
    p.add_argument("--model", help="model folder, hub id, gs:// folder or 'tiny' (default <run_dir>/model)")
    p.add_argument("--name", default="finetuned", help="name of this system in tables and plots (default finetuned)")
    add_data_args(p)
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from flant5_lib.evaluate import default_out_dir, evaluate_model

    params = params_from_args(args)
    model = args.model or str(Path(params.run_dir) / "model")
    out = Path(args.out) if args.out else default_out_dir(params, args.name)
    result = evaluate_model(params, model, split=params.eval_split, out_dir=out, name=args.name)
    print_result(result, out)
    for name, b in (result.get("baselines") or {}).items():
        print(f"  baseline {name}: " + " ".join(f"{k}={b[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")))
    return 0
