"""`flant5 params check|list|show`: validate parameter files before any job starts."""

from __future__ import annotations

import argparse

import yaml

from flant5_lib.config import describe_fields, load_params, parse_set


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="check, list or show parameters")
    psub = p.add_subparsers(dest="action", metavar="ACTION")
    psub.required = True
    c = psub.add_parser("check", help="validate params files")
    c.add_argument("files", nargs="+")
    c.set_defaults(func=_check)
    ls = psub.add_parser("list", help="every field with its default and help")
    ls.set_defaults(func=_list)
    s = psub.add_parser("show", help="the resolved parameters of a file plus --set overrides")
    s.add_argument("file", nargs="?")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", default=[])
    s.set_defaults(func=_show)


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
