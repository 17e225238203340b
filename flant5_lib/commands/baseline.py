"""`flant5 baseline`: score an extractive baseline (Lead-3, Longest-3) like a model, without one."""

from __future__ import annotations

import argparse
from pathlib import Path

from flant5_lib.commands.evaluate import add_data_args, params_from_args, print_result


def register(sub: argparse._SubParsersAction) -> None:
    from flant5_lib.baselines import BASELINES

    p = sub.add_parser(
        "baseline", help="score the Lead-3 or Longest-3 extractive baseline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score an extractive baseline exactly like a model (same metrics.json, predictions.jsonl and plots; lengths in\n"
        "words): what a summariser must beat without learning anything.",
        epilog="example:\n  flant5 baseline --method lead3 --dataset ../shared/data/samsum/original --split test",
    )
    p.add_argument("--method", required=True, choices=list(BASELINES), help="lead3: first 3 utterances; longest3: 3 longest")
    add_data_args(p)
    p.set_defaults(func=_baseline)


def _baseline(args: argparse.Namespace) -> int:
    from flant5_lib.evaluate import default_out_dir, run_baseline

    params = params_from_args(args)
    out = Path(args.out) if args.out else default_out_dir(params, args.method)
    print_result(run_baseline(params, args.method, split=params.eval_split, out_dir=out), out)
    return 0
