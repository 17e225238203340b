"""`flant5 model init-tiny`: a tiny random Flan-T5-family model, built with no network."""

from __future__ import annotations

import argparse

from flant5_lib.modeling import ARCHITECTURES, build_tiny_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="build or inspect models")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    msub.required = True
    t = msub.add_parser("init-tiny", help="build a tiny random T5 v1.1 (gated-gelu) + tokenizer offline")
    t.add_argument("--out", required=True, help="folder to write (Hugging Face layout, safetensors)")
    t.add_argument("--tokenizer", help="reuse this tokenizer folder (e.g. ../shared/tokenizers/t5) instead of training one")
    t.add_argument("--size", choices=list(ARCHITECTURES), default="tiny", help="'base-arch' = flan-t5-base shape, random weights")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_init_tiny)


def _init_tiny(args: argparse.Namespace) -> int:
    out = build_tiny_model(args.out, tokenizer_dir=args.tokenizer, seed=args.seed, size=args.size)
    print(out)
    return 0
