"""`flant5 params check|list|show`: validate parameter files before any job starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from flant5_lib.config import describe_fields, load_params, parse_set
from flant5_lib.docs import PARAMETERS_PAGE, parameters_page, write_parameters_page


DESCRIPTION = """Check, list or show parameters. Every command, notebook, Vertex job and the server read the one typed
`Params` model (flant5_lib/config.py); a params file holds only what differs from its defaults."""

EXAMPLES = """examples:
  flant5 params check params/*.yaml                                # validate files before any job starts
  flant5 params list                                               # every field, its default and what it does
  flant5 params show params/local-smoke.yaml --set learning_rate=1e-3   # the resolved values of a run
  flant5 params docs                                               # regenerate docs/parameters.md"""


def register(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("params", help="check, list or show parameters", description=DESCRIPTION, epilog=EXAMPLES,
                       formatter_class=raw)
    psub = p.add_subparsers(dest="action", metavar="ACTION")
    psub.required = True
    c = psub.add_parser("check", help="validate params files", formatter_class=raw,
                        description="Validate params files: every bad field of a file is named on one line (exit 2).",
                        epilog="example:\n  flant5 params check params/local-smoke.yaml params/vertex-a100.yaml")
    c.add_argument("files", nargs="+", metavar="FILE", help="params YAML files")
    c.set_defaults(func=_check)
    ls = psub.add_parser("list", help="every field with its default and help", formatter_class=raw,
                         description="Every Params field as `name: type = default  # help` "
                         "(docs/parameters.md has the same table).",
                         epilog="example:\n  flant5 params list | grep lora")
    ls.set_defaults(func=_list)
    s = psub.add_parser("show", help="the resolved parameters of a file plus --set overrides", formatter_class=raw,
                        description="Print every resolved value (defaults, then the file, then --set) as YAML.",
                        epilog="example:\n  flant5 params show params/local-smoke.yaml --set num_train_epochs=2")
    s.add_argument("file", nargs="?", metavar="FILE", help="params YAML (default: only the defaults)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override one field (repeatable)")
    s.set_defaults(func=_show)
    d = psub.add_parser("docs", help="regenerate the parameter reference page of the docs site", formatter_class=raw,
                        description="Write docs/parameters.md, every Params field in a Markdown table, from "
                        "flant5_lib/config.py (the page is generated; tests fail when it is stale).",
                        epilog="examples:\n  flant5 params docs            # rewrite the page after changing a field\n"
                        "  flant5 params docs --check    # exit 1 when the page is stale (CI)")
    d.add_argument("--out", default=PARAMETERS_PAGE, metavar="FILE",
                   help=f"page to write (default: {PARAMETERS_PAGE}, from the repository root)")
    d.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page differs from the code")
    d.set_defaults(func=_docs)


def _check(args: argparse.Namespace) -> int:
    for f in args.files:
        load_params(f)
        print(f"{f}: ok")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name, ann, default, help_ in describe_fields():
        print(f"{name}: {ann} = {default!r}  # {help_}")
    return 0


def _show(args: argparse.Namespace) -> int:
    params = load_params(args.file, parse_set(args.set))
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _docs(args: argparse.Namespace) -> int:
    if args.check:
        current = Path(args.out).read_text(encoding="utf-8") if Path(args.out).is_file() else None
        if current != parameters_page():
            print(f"{args.out} is stale: run `flant5 params docs --out {args.out}`", file=sys.stderr)
            return 1
        print(f"{args.out}: current")
        return 0
    changed = write_parameters_page(args.out)
    print(f"{args.out}: {'written' if changed else 'already current'}")
    return 0
