"""`flant5 train --params FILE [--set key=value ...]`: the same code as `python -m flant5_lib.train`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from flant5_lib.train.loop import add_arguments

    p = sub.add_parser("train", help="fine-tune the model (resumes from the newest complete checkpoint)")
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flant5_lib.train.loop import run

    return run(args)
