"""`flant5 train --params FILE [--set key=value ...]`: the same code as `python -m flant5_lib.train`."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  flant5 train --params params/local-smoke.yaml                       # tiny model, synthetic data, CPU
  flant5 train --params params/samsum-flan-t5-base.yaml --set label_smoothing=0.1 --set early_stopping_patience=3
Writes <run_dir>/model (the best checkpoint by validation ROUGE-Lsum), checkpoints/ and tensorboard/;
run the same command again after an interruption to resume."""


def register(sub: argparse._SubParsersAction) -> None:
    from flant5_lib.train.loop import add_arguments

    p = sub.add_parser(
        "train", help="fine-tune the model (resumes from the newest complete checkpoint)",
        description="Fine-tune a Flan-T5 model on dialogue summaries: validation ROUGE at each evaluation, the best "
        "checkpoint published, atomic checkpoints resumed automatically.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flant5_lib.train.loop import run

    return run(args)
