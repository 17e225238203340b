"""`flant5 --help` starts in well under a second because no help screen imports a heavy library: each command module
imports torch, transformers, pandas, papermill, the Vertex SDK ... inside the function that runs the command.

Not a timing test (a loaded machine would make it flaky): it checks the cause, in a fresh interpreter, for every
`--help` the parser has, sub-commands of sub-commands included. docs/benchmarks.md records the measured start time.
"""

from __future__ import annotations

import json
import subprocess
import sys

from flant5_lib.cli import COMMAND_MODULES
from tests.helpers import REPO

# Each costs from 0.1 s (nbformat, numpy) to several seconds (torch, transformers, the Vertex SDK) to import.
HEAVY = ["torch", "transformers", "datasets", "accelerate", "peft", "ctranslate2", "numpy", "pandas", "pyarrow",
         "matplotlib", "nbformat", "papermill", "jupyter_client", "IPython", "optuna", "kfp", "fastapi", "uvicorn",
         "httpx", "google.cloud.aiplatform", "google.cloud.storage", "rouge_score", "nltk", "tensorboard"]

PROBE = """
import argparse, contextlib, io, json, sys
import flant5_lib.cli as cli

def helps(parser, prefix):
    yield [*prefix, "--help"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from helps(sub, [*prefix, name])

shown = []
for argv in [["--version"], *helps(cli.build_parser(), [])]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli.main(argv)
        except SystemExit as stop:
            assert stop.code in (0, None), (argv, stop.code)
    shown.append([" ".join(argv), out.getvalue().splitlines()[0] if out.getvalue() else ""])
heavy = json.loads(sys.argv[1])
print(json.dumps({"shown": shown, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_no_help_screen_imports_a_heavy_library() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    shown = dict(got["shown"])
    assert shown["--version"].startswith("flant5 ")
    for name in COMMAND_MODULES:  # every command's help was shown (and some sub-commands')
        assert shown[f"{name} --help"].startswith(f"usage: flant5 {name}"), name
    assert len(shown) > len(COMMAND_MODULES) + 2
    assert got["loaded"] == [], f"imported by a help screen: {got['loaded']} (import them inside the command)"
