"""The `flant5` command: each sub-command lives in `flant5_lib/commands/<name>.py`.

A `UserError` becomes one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from flant5_lib import __version__
from flant5_lib.errors import UserError

# Order = order in `flant5 --help`. Each module exposes `register(subparsers)`.
COMMAND_MODULES = [
    "params",
    "data",
    "model",
    "train",
    "evaluate",
    "baseline",
    "summarize",
    "serve",
    "vertex",
    "run",
    "compare",
    "sweep",
    "pipeline",
]


EXAMPLES = """examples:
  flant5 run --params params/local-smoke.yaml          # the whole notebook chain, offline (./workbench.sh demo)
  flant5 params check params/vertex-a100.yaml          # validate a params file before a GPU job starts
  flant5 serve --model runs/local-smoke/model          # the prediction server on 127.0.0.1:8080"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flant5",
        description="Fine-tune Flan-T5 on SAMSum-style dialogues, evaluate it, and serve it locally or on Vertex AI. "
        "Every command reads the same parameters (`flant5 params list`); `flant5 COMMAND --help` has examples.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flant5 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"flant5_lib.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"flant5_lib.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = args.func(args)
    except UserError as err:
        print(f"flant5 {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"flant5 {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
