"""The README and the docs site agree with the code: the site builds strictly, the generated parameter page is current,
every `flant5` / `./workbench.sh` / benchmark command shown exists with its flags, and the README reaches every page."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from markdown.extensions.toc import slugify

from flant5_lib.cli import build_parser, main
from flant5_lib.config import Params
from flant5_lib.docs import PARAMETERS_PAGE, parameters_page

from tests.helpers import REPO
from tests.workbench.test_help import CREATED_AT_RUN_TIME, named_paths

DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_BYTES = 15_000  # issue 25: the README is a front door; reference and lab notes live in docs/
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, in order (mkdocs.yml has no custom YAML tags, so safe_load reads it)."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    return [page for item in config["nav"] for page in item.values()]


# --- the site ---------------------------------------------------------------------------------------------------

def build_site(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's notice about MkDocs 2, not a warning about our pages
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(root / "mkdocs.yml"),
               "--site-dir", str(site)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=300)  # hang guard only


def test_site_builds_strictly(tmp_path):
    result = build_site(REPO, tmp_path / "site")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    for page in nav_pages():
        assert (tmp_path / "site" / page.replace(".md", ".html")).is_file(), f"{page} was not built"


def test_strict_build_fails_on_a_broken_link_a_missing_anchor_and_a_page_left_out_of_nav(tmp_path):
    """The validation in mkdocs.yml must be able to fail: a copy of the site with three mistakes does not build."""
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    with (tmp_path / "docs" / "data.md").open("a", encoding="utf-8") as f:
        f.write("\n[gone](no-such-page.md) and [nowhere](training.md#no-such-section)\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n", encoding="utf-8")
    result = build_site(tmp_path, tmp_path / "site")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no-such-page.md" in out and "no-such-section" in out and "orphan.md" in out, out


def test_the_nav_has_every_topic_of_the_issue():
    topics = {"getting-started.md", "data.md", "training.md", "evaluation.md", "workbench.md", "many-runs.md",
              "serving.md", "vertex.md", "benchmarks.md", "architecture.md", "parameters.md"}
    assert topics <= set(nav_pages()), f"missing from mkdocs.yml nav: {sorted(topics - set(nav_pages()))}"


# --- the generated parameter reference --------------------------------------------------------------------------

def test_parameters_page_is_current():
    page = (REPO / PARAMETERS_PAGE).read_text(encoding="utf-8")
    assert page == parameters_page(), f"{PARAMETERS_PAGE} is stale: run `.venv/bin/flant5 params docs`"


def test_parameters_page_has_a_row_per_field_with_its_default():
    page = parameters_page()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| .*? \| <code>(.*?)</code> \|", page, re.M)}
    assert set(rows) == set(Params.model_fields)
    assert rows["learning_rate"] == "5e-05" and rows["run_dir"] == "'runs/latest'"
    assert rows["turn_separator"] == "' &#124; '"  # a bare pipe would split the table's cell
    # and every row has exactly the table's four cells once escaped pipes are set aside
    table = [line for line in page.splitlines() if line.startswith("| `")]
    assert all(line.replace("\\|", "").count("|") == 5 for line in table)


def test_params_docs_writes_the_page_and_check_catches_a_stale_one(tmp_path, capsys):
    page = tmp_path / "parameters.md"
    assert main(["params", "docs", "--out", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == parameters_page()
    assert main(["params", "docs", "--out", str(page), "--check"]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("Peak learning rate.", "Old text."), encoding="utf-8")
    capsys.readouterr()
    assert main(["params", "docs", "--out", str(page), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert "Old text." in page.read_text(encoding="utf-8"), "--check must not write"


# --- the README as a front door ---------------------------------------------------------------------------------

def test_readme_is_a_front_door_of_at_most_15_kb():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move reference material to a page under docs/"


def test_readme_opens_with_the_three_quickstart_commands():
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["./workbench.sh demo", "./workbench.sh lab", "./workbench.sh test"]
    assert text.index("```bash") < text.index("\n## "), "the quickstart comes before any section"


LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_links_to_every_page_of_the_site():
    """A newcomer reaches any topic in one click."""
    targets = {t.split("#")[0] for t in LINK_RE.findall(README.read_text(encoding="utf-8"))}
    missing = [p for p in nav_pages() if f"docs/{p}" not in targets]
    assert not missing, f"README.md links to no docs/{missing}"


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_resolve():
    """mkdocs checks the pages' links; this checks the README's, which GitHub renders (files and #anchors)."""
    bad = []
    for target in LINK_RE.findall(README.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path
        if not file.exists() or (anchor and anchor not in anchors(file)):
            bad.append(target)
    assert not bad, f"README.md links that lead nowhere: {bad}"


HTML_TAGS = {"code", "br", "details", "summary", "sub", "sup", "kbd", "em", "strong", "a", "span", "div", "img"}


def test_no_placeholder_is_swallowed_as_an_html_tag():
    """`<run_dir>/model` outside a code span is an unknown HTML tag to a browser: the words vanish from the page."""
    bad = []
    for page in PAGES:
        text = re.sub(r"^\s*```.*?^\s*```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        text = re.sub(r"<!--.*?-->", "", INLINE_RE.sub("", text), flags=re.S)
        bad += [f"{page.name}: <{tag}>" for tag in re.findall(r"</?([A-Za-z_][\w-]*)[^>]*>", text)
                if tag.lower() not in HTML_TAGS]
    assert not bad, f"wrap these in backticks or write &lt;...&gt;: {bad}"


def test_paths_named_in_the_docs_exist():
    missing = {f"{page.name}: {p}" for page in PAGES
               for p in named_paths(page.read_text(encoding="utf-8")) - CREATED_AT_RUN_TIME if not (REPO / p).exists()}
    assert not missing, f"pages name files that do not exist: {sorted(missing)}"


# --- every command shown exists ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    where: str        # file:line
    words: tuple[str, ...]  # from the program on, up to a shell operator
    complete: bool    # a whole command line in a code block (parsed in full), or a fragment in running text


FENCE_RE = re.compile(r"^\s*```(\w*)")
INLINE_RE = re.compile(r"`([^`\n]+)`")
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "(", ")"}


def _words(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    try:
        return list(lex)
    except ValueError:  # an unbalanced quote: not a command line
        return []


def _segments(words: list[str]) -> list[list[str]]:
    segment: list[str] = []
    out = [segment]
    for w in words:
        if w in OPERATORS:
            segment = []
            out.append(segment)
        else:
            segment.append(w)
    return [s for s in out if s]


def shown_commands(page: Path) -> list[Shown]:
    """Commands in the page's shell code blocks (continuation lines joined), and `flant5 ...` spans in its text."""
    found: list[Shown] = []
    rel = page.relative_to(REPO)
    lines = page.read_text(encoding="utf-8").splitlines()
    in_block, shell, pending, start = False, False, "", 0
    for n, line in enumerate(lines, 1):
        fence = FENCE_RE.match(line)
        if fence:
            in_block, shell = (not in_block, fence.group(1) in SHELL_BLOCKS) if not in_block else (False, False)
            continue
        if in_block:
            if not shell:
                continue
            start = start if pending else n
            pending += line.rstrip("\\").strip() + " "
            if line.rstrip().endswith("\\"):
                continue
            for seg in _segments(_words(pending)):
                found.append(Shown(f"{rel}:{start}", tuple(seg), True))
            pending = ""
        else:
            for span in INLINE_RE.findall(line):
                if re.match(r"(\.venv/bin/)?flant5 ", span) or span.startswith("./workbench.sh "):
                    found.append(Shown(f"{rel}:{n}", tuple(_words(span)), False))
    return found


ALL_SHOWN = [c for page in PAGES for c in shown_commands(page)]


def program(cmd: Shown) -> tuple[str, list[str]] | None:
    """('flant5' | 'workbench' | 'benchmarks/x.py', arguments) for the commands this file checks, else None."""
    words = list(cmd.words)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value before the program
        words = words[1:]
    if not words:
        return None
    if words[0] == "flant5" or words[0].endswith("bin/flant5"):
        return "flant5", words[1:]
    if words[0] == "./workbench.sh":
        return "workbench", words[1:]
    if re.fullmatch(r"(\S*/)?python[\d.]*", words[0]) and len(words) > 1 and words[1].startswith("benchmarks/"):
        return words[1], words[2:]
    return None


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def flant5_problems(args: list[str], complete: bool) -> list[str]:
    """What is wrong with `flant5 ARGS` against the real parser: unknown sub-commands and flags, and for a whole
    command line whatever argparse itself refuses (missing required options, bad choices)."""
    parser, name, problems, skip = build_parser(), "flant5", [], False
    for i, word in enumerate(args):
        if skip:
            skip = False
            continue
        if word == "...":
            return problems  # "flant5 vertex ...": a family of commands, not one
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            flag = word.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)
            if action is None:
                problems.append(f"`{name}` has no option {flag}")
            elif action.nargs != 0 and "=" not in word:
                skip = True
            continue
        children = subparsers(parser)
        if children:
            if word not in children:
                return [*problems, f"`{name}` has no sub-command {word!r} (it has: {', '.join(children)})"]
            parser, name = children[word], f"{name} {word}"
    if complete and not problems:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(args)
            except SystemExit as exit_:
                if exit_.code:
                    problems.append(err.getvalue().strip())
    return problems


def workbench_commands() -> set[str]:
    """The labels of workbench.sh's `case` over its first argument."""
    script = (REPO / "workbench.sh").read_text(encoding="utf-8")
    body = script.split('case "${1:-}" in', 1)[1].split("\nesac", 1)[0]
    return {label for labels in re.findall(r"^ {4}([\w|-]+)\)", body, re.M) for label in labels.split("|")}


def benchmark_flags(script: str) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", (REPO / script).read_text(encoding="utf-8")))


def problems_of(cmd: Shown) -> list[str]:
    prog = program(cmd)
    if prog is None:
        return []
    name, args = prog
    if name == "flant5":
        return flant5_problems(args, cmd.complete)
    if name == "workbench":
        return [] if args and args[0] in workbench_commands() else [f"./workbench.sh has no command {args[:1]}"]
    if not (REPO / name).is_file():
        return [f"{name} does not exist"]
    flags = benchmark_flags(name)
    return [f"{name} has no option {w}" for w in args if w.startswith("--") and w.split("=")[0] not in flags]


def test_commands_are_found_on_the_pages():
    """The extraction below must see the commands, or the check that follows would pass on nothing."""
    progs = [program(c) for c in ALL_SHOWN]
    assert sum(1 for p in progs if p and p[0] == "flant5") >= 40
    assert sum(1 for p in progs if p and p[0] == "workbench") >= 6
    assert any(p and p[0].startswith("benchmarks/") for p in progs)
    joined = {" ".join(c.words) for c in ALL_SHOWN}
    assert ".venv/bin/flant5 vertex predict --params params/local-smoke.yaml --local-stack runs/stack.json " \
           "--dialogue A: hi\\nB: hello" in joined  # a quoted argument stays one word


@pytest.mark.parametrize("cmd", ALL_SHOWN, ids=[f"{c.where} {' '.join(c.words)[:60]}" for c in ALL_SHOWN])
def test_every_command_shown_exists_with_its_flags(cmd):
    assert not problems_of(cmd), f"{cmd.where}: `{' '.join(cmd.words)}`: {'; '.join(problems_of(cmd))}"


@pytest.mark.parametrize(("line", "problem"), [
    ("flant5 nosuch --params x.yaml", "no sub-command 'nosuch'"),
    ("flant5 vertex train --params x.yaml --no-such-flag", "no option --no-such-flag"),
    ("flant5 run --only 00", "--params"),  # complete line: argparse's own "required" check
    ("flant5 data show --split nosplit", "invalid choice"),
    ("./workbench.sh deploy", "no command"),
    ("python benchmarks/train_bench.py --no-such-flag", "no option --no-such-flag"),
])
def test_the_command_check_catches_mistakes(line, problem):
    found = problems_of(Shown("example", tuple(_words(line)), True))
    assert any(problem in p for p in found), found


def test_the_command_check_accepts_real_commands():
    for line in ("flant5 vertex train --params x.yaml --set a=1 --dry-run", "flant5 data show --dataset d -n 3",
                 "flant5 vertex ...", "./workbench.sh demo --only 00", "python benchmarks/serve_bench.py --quick"):
        assert problems_of(Shown("example", tuple(_words(line)), True)) == [], line
    assert {"demo", "lab", "test", "setup"} <= workbench_commands()
