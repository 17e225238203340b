"""Help that teaches: every `flant5` (sub)command says what it is for and shows an example; every argument has help;
every repository path named in a help text or in the README exists."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from flant5_lib.cli import build_parser

from tests.helpers import REPO

# A repository path: a top-level folder of the checkout followed by a file or folder name. Globs, <placeholders>,
# and what runs create (runs/, the server's downloaded serving/model) are not checked.
PATH_RE = re.compile(r"(?<![\w/.-])((?:params|notebooks|flant5_lib|benchmarks|serving|training|tests|\.ci)/[\w./*<>-]*[\w*>])")
CREATED_AT_RUN_TIME = {"serving/model"}


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    def walk(name: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from walk(f"{name} {sub}", child)

    yield from walk("flant5", build_parser())


def leaves() -> list[tuple[str, argparse.ArgumentParser]]:
    """Commands that run something (not only a group of sub-commands)."""
    return [(n, p) for n, p in parsers() if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]


ALL = list(parsers())


@pytest.mark.parametrize(("name", "parser"), ALL, ids=[n for n, _ in ALL])
def test_every_command_has_a_description_and_an_example(name, parser):
    assert (parser.description or "").strip(), f"`{name} --help` has no description"
    epilog = parser.epilog or ""
    assert "example" in epilog.lower() and "flant5 " in epilog, f"`{name} --help` shows no example"


@pytest.mark.parametrize(("name", "parser"), leaves(), ids=[n for n, _ in leaves()])
def test_every_argument_has_help(name, parser):
    missing = [a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and (a.help is None or not str(a.help).strip())]
    assert not missing, f"`{name}`: arguments without help: {missing}"


def named_paths(text: str) -> set[str]:
    return {m.rstrip(".") for m in PATH_RE.findall(text) if "<" not in m and "*" not in m and "..." not in m}


def test_paths_named_in_help_texts_exist():
    texts = []
    for _, parser in ALL:
        texts += [parser.description or "", parser.epilog or ""] + [str(a.help or "") for a in parser._actions]
    missing = sorted(p for p in named_paths("\n".join(texts)) - CREATED_AT_RUN_TIME if not (REPO / p).exists())
    assert not missing, f"help texts name files that do not exist: {missing}"


def test_paths_named_in_the_readme_exist():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    missing = sorted(p for p in named_paths(text) - CREATED_AT_RUN_TIME if not (REPO / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"


def test_the_path_pattern_finds_paths():
    text = "see params/local-smoke.yaml, `flant5_lib/config.py:Params` and runs/x/model; not params/*.yaml, notebooks/NN_*.ipynb"
    assert named_paths(text) == {"params/local-smoke.yaml", "flant5_lib/config.py"}
