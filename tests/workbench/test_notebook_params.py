"""Plain papermill: a typo'd or wrongly typed parameter stops the notebook in its first cell with one line."""

from __future__ import annotations

import nbformat
import pytest

from flant5_lib.errors import ParamsError
from flant5_lib.workbench.notebook import injected_parameters, notebook_params

from tests.helpers import REPO


def test_papermill_typo_and_wrong_type_fail_with_one_line_naming_them(tmp_path):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from flant5_lib.workbench.runner import ensure_kernel

    out = tmp_path / "00.ipynb"
    with pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(REPO / "notebooks" / "00_explore_samsum.ipynb"), str(out), kernel_name=ensure_kernel(),
            parameters={"run_dir": str(tmp_path / "run"), "n_exampels": 3, "length_multiple": "sixteen"},
            cwd=str(REPO / "notebooks"), progress_bar=False,
        )
    err = info.value
    assert err.ename == "ParamsError" and len(err.traceback) == 1, err.traceback
    line = err.traceback[0]
    assert "n_exampels: not a parameter of this notebook (did you mean n_examples?)" in line
    assert "length_multiple: 'sixteen' is not a valid int" in line
    # it stopped in the cell right after the parameters, before any work
    executed = nbformat.read(out, as_version=4)
    failed = [c.source for c in executed.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and failed[0].startswith("params = notebook_params(globals())")
    assert not (tmp_path / "run").exists()


def test_injected_parameters_are_read_from_the_kernel_history():
    history = ["import x", 'run_dir: str = "."  # folder\nn_examples: int = 3  # rows',
               '# Parameters\nrun_dir = "/tmp/r"\nlearnin_rate = 0.1\n', "params = notebook_params(globals())"]
    declared, injected = injected_parameters(history)
    assert declared == {"run_dir": "str", "n_examples": "int"} and set(injected) == {"run_dir", "learnin_rate"}
    assert injected_parameters(history[:2]) == ({}, {})  # nothing injected (JupyterLab, nbval): nothing to compare


def test_notebook_params_names_a_typo_and_builds_params_otherwise():
    cell = 'run_dir: str = "."  # folder\nn_examples: int = 3  # rows'
    ns = {"In": ["", cell, '# Parameters\nlearnin_rate = 0.1\n'], "run_dir": ".", "n_examples": 3, "learnin_rate": 0.1}
    with pytest.raises(ParamsError, match="learnin_rate: not a parameter of this notebook \\(did you mean learning_rate\\?\\)"):
        notebook_params(ns)
    ns = {"In": ["", cell, '# Parameters\nlearning_rate = 0.1\nn_examples = 5\n'], "run_dir": ".", "n_examples": 5,
          "learning_rate": 0.1}
    params = notebook_params(ns)
    assert params.learning_rate == 0.1
    ns["n_examples"] = True  # a bool is not an int here
    ns["In"][-1] = "# Parameters\nn_examples = True\n"
    with pytest.raises(ParamsError, match="n_examples: True is not a valid int"):
        notebook_params(ns)


def test_text_tables_keep_line_breaks_escape_tags_and_round_numbers():
    import pandas as pd

    from flant5_lib.workbench import text_table

    html = text_table(pd.DataFrame({"dialogue": ["Anna: <file_photo>\nBob: nice"], "rougeL": [67.123456]})).to_html()
    assert "&lt;file_photo&gt;" in html and "<file_photo>" not in html
    assert "white-space: pre-wrap" in html and "text-align: left" in html
    assert ">67.1<" in html and "67.12" not in html
