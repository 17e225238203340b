"""`flant5 model init-tiny`: a tiny random Flan-T5-family model, built with no network."""

from __future__ import annotations

import argparse

from flant5_lib.modeling import ARCHITECTURES, build_tiny_model


def register(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("model", help="build or inspect models", formatter_class=raw,
                       description="Build models offline (no hub needed): tiny random Flan-T5-family checkpoints for tests and demos, or\n"
        "flan-t5-base's architecture with random weights for benchmarks.",
                       epilog="example:\n  flant5 model init-tiny --out runs/tiny-model")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    msub.required = True
    t = msub.add_parser(
        "init-tiny", help="build a tiny random T5 v1.1 (gated-gelu) + tokenizer offline", formatter_class=raw,
        description="Build a random T5 v1.1 (gated-GELU, its own output layer, as Flan-T5) with a tokenizer trained on synthetic\n"
        "dialogues, saved as safetensors in the Hugging Face layout. Initialised so the first training loss is near\n"
        "ln(vocab size).",
        epilog="examples:\n  flant5 model init-tiny --out runs/tiny-model\n"
        "  flant5 model init-tiny --out runs/base-arch --size base-arch --tokenizer ../shared/tokenizers/t5",
    )
    t.add_argument("--out", required=True, help="folder to write (Hugging Face layout, safetensors)")
    t.add_argument("--tokenizer", help="reuse this tokenizer folder (e.g. ../shared/tokenizers/t5) instead of training one")
    t.add_argument("--size", choices=list(ARCHITECTURES), default="tiny", help="'base-arch' = flan-t5-base shape, random weights")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokenizer's training data (default 0)")
    t.set_defaults(func=_init_tiny)


def _init_tiny(args: argparse.Namespace) -> int:
    out = build_tiny_model(args.out, tokenizer_dir=args.tokenizer, seed=args.seed, size=args.size)
    print(out)
    return 0
