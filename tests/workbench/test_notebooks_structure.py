"""The notebooks' conventions: purpose first, one flat parameters cell, typed params right after, no outputs.

Running them is nbval's job (`./workbench.sh test` runs `pytest --nbval-lax notebooks/`); these checks are instant.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tests.helpers import REPO
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_explore_samsum", "01_finetune_local", "02_vertex_training", "03_evaluate", "04_deploy", "05_online_predict",
            "06_compare_runs", "07_release_pipeline"]
PARAM_LINE = re.compile(r'^[a-z_][a-z0-9_]*: (str|int|float|bool|"Optional\[(str|int|float|bool)\]") = \S.*  # \S.*$')


def read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def test_the_numbered_notebooks_are_all_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_conventions(path):
    nb = read(path)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and "What this notebook is for" in cells[0].source
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one parameters cell"
    i = tagged[0]
    lines = [ln for ln in cells[i].source.splitlines() if ln.strip() and not ln.startswith("# ")]
    bad = [ln for ln in lines if not PARAM_LINE.match(ln)]
    assert bad == [], f"not `name: type = default  # help`: {bad}"
    assert any(ln.startswith("run_dir: str = ") for ln in lines)
    assert cells[i + 1].source.startswith("params = notebook_params(globals())"), "validate what papermill injected first"
    assert all(c.cell_type == "markdown" or "import" in c.source for c in cells[1:i]), "only imports before parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_committed_outputs_or_hidden_logic(path):
    nb = read(path)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
            assert "%%writefile" not in c.source and "!pip" not in c.source
            if "parameters" not in c.metadata.get("tags", []):  # declarations, one per line, are not logic
                assert len(c.source.splitlines()) <= 15, "cells stay short: move logic into flant5_lib"
            assert not re.search(r"^\s*def |^\s*class ", c.source, re.M), "functions belong in flant5_lib"
    # The project's kernel (JupyterLab falls back to the one Python kernel by `language` where it is not registered).
    assert nb.metadata.kernelspec == {"name": "flant5", "display_name": "Python (flant5)", "language": "python"}


def test_vertex_notebooks_stop_what_they_start():
    """02/04/05 may start the offline stand-in; their last code cell closes the session (which stops it)."""
    for stem in ("02_vertex_training", "04_deploy", "05_online_predict"):
        nb = read(REPO / "notebooks" / f"{stem}.ipynb")
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert "connect_vertex(params)" in "\n".join(code)
        assert "session.close(keep=keep_stack)" in code[-1]
    last = [c.source for c in read(REPO / "notebooks" / "05_online_predict.ipynb").cells if c.cell_type == "code"][-1]
    assert "if cleanup:" in last
