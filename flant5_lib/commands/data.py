"""`flant5 data explore|show`: look at a dataset before training on it."""

from __future__ import annotations

import argparse

from flant5_lib.config import SPLITS, Params, load_params, parse_set


RAW = argparse.RawDescriptionHelpFormatter


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="params YAML (dataset, model, preprocessing); --dataset overrides it")
    p.add_argument("--dataset", help="dataset spec: synthetic[:N], a folder, corpus.7z, a hub id or gs://")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one parameter (repeatable), e.g. text_column=conversation for other column names")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="explore or show a dataset", formatter_class=RAW,
        description="Look at a dataset before training on it: SAMSum, DialogSum or any file of dialogues and summaries (column\n"
        "names set with text_column / summary_column / id_column).",
        epilog="examples:\n  flant5 data explore --dataset ../shared/data/samsum/original --set missing_split=skip --out runs/explore\n"
        "  flant5 data show --dataset dialogsum/ --set id_column=fname -n 2",
    )
    dsub = p.add_subparsers(dest="action", metavar="ACTION")
    dsub.required = True

    e = dsub.add_parser(
        "explore", help="lengths, turns, speakers, size buckets, suggested max lengths", formatter_class=RAW,
        description="Lengths (words, tokens), turns, speakers and SAMSum size buckets per split, with the max_source_length /\n"
        "max_target_length that cover a percentile of the data.",
        epilog="example:\n  flant5 data explore --dataset synthetic:1000 --no-tokens --out runs/explore",
    )
    _common(e)
    e.add_argument("--tokenizer", help="tokenizer folder for token lengths (default: the model's own)")
    e.add_argument("--no-tokens", action="store_true", help="skip token lengths (no tokenizer needed)")
    e.add_argument("--out", help="write stats.json and PNG plots here")
    e.add_argument("--source-percentile", type=float, default=99, help="percentile max_source_length covers")
    e.add_argument("--target-percentile", type=float, default=99, help="percentile max_target_length covers")
    e.add_argument("--multiple", type=int, default=16, help="round suggested lengths up to a multiple of this")
    e.set_defaults(func=_explore)

    s = dsub.add_parser(
        "show", help="print a few dialogues with their summaries", formatter_class=RAW,
        description="Print a few dialogues of one split with their reference summaries, as the loader reads them.",
        epilog="example:\n  flant5 data show --dataset synthetic:100 --split validation -n 2 --seed 1",
    )
    _common(s)
    s.add_argument("--split", default="test", choices=SPLITS, help="which split (default test)")
    s.add_argument("-n", type=int, default=3, help="how many dialogues")
    s.add_argument("--seed", type=int, help="pick at random with this seed (default: the first n)")
    s.set_defaults(func=_show)


def _params(args: argparse.Namespace) -> Params:
    overrides = parse_set(args.set)
    if args.dataset:
        overrides["dataset"] = args.dataset
    return load_params(args.params, overrides)


def _explore(args: argparse.Namespace) -> int:
    from flant5_lib.errors import UserError
    from flant5_lib.explore import explore, format_table

    for name in ("source_percentile", "target_percentile"):
        if not 0 < getattr(args, name) <= 100:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be in (0, 100]")
    if args.multiple < 1:
        raise UserError(f"--multiple {args.multiple}: must be >= 1")
    params = _params(args)
    stats = explore(
        params, tokenizer_dir=args.tokenizer, out_dir=args.out, with_tokens=not args.no_tokens,
        source_percentile=args.source_percentile, target_percentile=args.target_percentile, multiple=args.multiple,
    )
    print(format_table(stats))
    if args.out:
        print(f"wrote {args.out}/stats.json and {len(stats.get('files', {})) - 1} plots")
    return 0


def _show(args: argparse.Namespace) -> int:
    from flant5_lib.data import Columns, load_split
    from flant5_lib.errors import UserError
    from flant5_lib.explore import format_dialogues, sample_dialogues

    if args.n < 1:
        raise UserError(f"-n {args.n}: must be at least 1")
    params = _params(args)
    ds = load_split(params.dataset, args.split, seed=params.seed, columns=Columns.from_params(params))
    print(format_dialogues(sample_dialogues(ds, args.n, seed=args.seed)))
    return 0
