"""`flant5 run`: validation before any notebook, failures named with their cell, the run folder's index page."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from flant5_lib.cli import main
from flant5_lib.workbench.runner import plan_run, select_notebooks

from tests.helpers import REPO
NOTEBOOKS_DIR = REPO / "notebooks"


def write_notebook(path: Path, *cells: str, params: str = 'run_dir: str = "."  # run folder') -> Path:
    """A small notebook: markdown, a parameters cell, then `cells` (code)."""
    p = new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("test"), p, *[new_code_cell(c) for c in cells]],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nb_dir(tmp_path: Path) -> Path:
    """00 writes a marker (so a test can tell whether anything ran); 01 fails on purpose when told to."""
    d = tmp_path / "nbs"
    d.mkdir()
    write_notebook(d / "00_marker.ipynb", "from pathlib import Path\nPath(run_dir, 'ran-00').write_text('yes')")
    write_notebook(
        d / "01_maybe_fail.ipynb",
        "from flant5_lib.config import params_from_namespace\nparams = params_from_namespace(globals())",
        "x = 1",
        "if params.seed == 13:\n    raise ValueError('boom on purpose')\nif params.seed == 14:\n"
        "    from flant5_lib.errors import DataError\n    raise DataError('data.csv: row 3 has no dialogue')",
        params='run_dir: str = "."  # run folder\nseed: int = 42  # seed',
    )
    return d


def smoke_file(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "p.yaml"
    f.write_text("dataset: synthetic:100\nmodel_name: tiny\n" + extra)
    return f


def test_bad_params_stop_before_any_notebook(tmp_path, nb_dir, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--params", str(smoke_file(tmp_path, "learning_rat: 1\nnum_beams: lots\n")),
               "--notebooks", str(nb_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "learning_rat: unknown key" in err and "num_beams" in err
    assert not out.exists()  # nothing started, nothing written


def test_bad_set_value_names_the_field(tmp_path, nb_dir, capsys):
    rc = main(["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--out", str(tmp_path / "r"),
               "--set", "per_device_train_batch_size=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "per_device_train_batch_size" in err and not (tmp_path / "r").exists()


def test_missing_params_file_and_notebook_are_named(tmp_path, nb_dir, capsys):
    assert main(["run", "--params", str(tmp_path / "nope.yaml"), "--notebooks", str(nb_dir)]) == 2
    assert "nope.yaml: params file not found" in capsys.readouterr().err
    rc = main(["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--only", "00,07",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--only 07: no such notebook" in err and "00_marker" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_notebook_without_parameters_cell_is_named(tmp_path, nb_dir, capsys):
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), nb_dir / "02_no_params.ipynb")
    rc = main(["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--out", str(tmp_path / "r")])
    assert rc == 2 and "02_no_params.ipynb: needs exactly one cell tagged 'parameters'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cloud_placeholders_stop_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["run", "--params", str(REPO / "params" / "vertex-a100.yaml"), "--only", "02", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "gcp_project" in err and "staging_bucket" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_rerun_stops_and_offers_resume_or_fresh(tmp_path, nb_dir, capsys):
    out = tmp_path / "run"
    argv = ["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--out", str(out), "--only", "00"]
    assert main(argv) == 0
    kept = out / "model" / "kept.txt"  # stands for what an earlier run leaves: a model, checkpoints
    kept.parent.mkdir()
    kept.write_text("from the first run")
    (out / "ran-00").unlink()
    capsys.readouterr()

    assert main(argv) == 2  # no flag: nothing runs, one line names both ways on
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--resume" in err and "--fresh" in err
    assert "ok, notebooks 00-00" in err and not (out / "ran-00").exists()

    assert main([*argv, "--resume"]) == 0  # today's behaviour: into the same folder, what it held stays
    assert (out / "ran-00").is_file() and kept.read_text() == "from the first run"
    (out / "ran-00").unlink()

    assert main([*argv, "--fresh"]) == 0  # cleared first, then run
    assert (out / "ran-00").is_file() and not kept.exists()
    assert json.loads((out / "run.json").read_text())["status"] == "ok"
    assert main([*argv, "--resume", "--fresh"]) == 0  # the last of the two wins (a wrapper may pass one first)
    assert not list(tmp_path.glob(".run.cleared-*"))  # nothing left aside


def test_fresh_clears_only_a_folder_flant5_run_made(tmp_path, nb_dir, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a run")
    argv = ["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--only", "00", "--fresh"]
    assert main([*argv, "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "has no run.json" in err and (mine / "notes.txt").read_text() == "not a run"

    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(out)  # clearing it would pull the working directory away
    assert main([*argv, "--out", str(out)]) == 2
    assert "which this run needs" in capsys.readouterr().err and (out / "run.json").is_file()
    monkeypatch.chdir(tmp_path)
    nbs_inside = out / "nbs"
    shutil.copytree(nb_dir, nbs_inside)  # the notebooks this run reads live in the folder
    assert main([*argv, "--out", str(out), "--notebooks", str(nbs_inside)]) == 2
    assert "which this run needs" in capsys.readouterr().err and nbs_inside.is_dir()


def test_plan_reads_the_params_file_once(tmp_path, monkeypatch):
    """One read: a file changed between reads (or on gs://, read over the network) cannot give two answers."""
    import flant5_lib.config
    from flant5_lib.workbench import runner

    reads: list[str] = []
    real = flant5_lib.config.read_params_file

    def counting(path):
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(runner, "read_params_file", counting)
    monkeypatch.setattr(flant5_lib.config, "read_params_file", counting)  # what load_params would call
    plan = plan_run(str(smoke_file(tmp_path)), {"n_examples": 3, "seed": 7}, out=str(tmp_path / "r"),
                    only=["00", "01"], notebooks_dir=NOTEBOOKS_DIR)
    assert reads == [str(tmp_path / "p.yaml")]
    assert plan.params.seed == 7 and plan.params.model_name == "tiny" and plan.notebook_overrides == {"n_examples": 3}


def test_only_selects_by_number_or_name(tmp_path):
    nbs = [Path(f"{n}.ipynb") for n in ("00_a", "01_b", "03_c")]
    assert [p.stem for p in select_notebooks(nbs, ["3", "00_a"])] == ["00_a", "03_c"]
    plan = plan_run(None, {"dataset": "synthetic:100", "model_name": "tiny"}, out=str(tmp_path / "r"), only=["00"],
                    notebooks_dir=NOTEBOOKS_DIR)
    assert [p.name for p in plan.notebooks] == ["00_explore_samsum.ipynb"] and plan.run_dir == (tmp_path / "r").resolve()


def test_failing_notebook_is_named_with_its_cell(tmp_path, nb_dir, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--out", str(out),
               "--set", "seed=13"])
    captured = capsys.readouterr()
    line = [ln for ln in captured.err.splitlines() if "error:" in ln]
    assert rc == 1 and len(line) == 1
    assert "01_maybe_fail.ipynb: cell 5 [" in line[0] and "ValueError: boom on purpose" in line[0]
    # the executed copy is kept, and "cell 5" is its In [5] (after papermill's injected-parameters cell)
    executed = nbformat.read(out / "notebooks" / "01_maybe_fail.ipynb", as_version=4)
    failed = next(c for c in executed.cells if c.get("execution_count") == 5)
    assert "boom on purpose" in failed.source and failed.outputs[-1]["ename"] == "ValueError"
    assert (out / "ran-00").read_text() == "yes"
    info = json.loads((out / "run.json").read_text())
    assert [n["status"] for n in info["notebooks"]] == ["ok", "failed"] and info["status"] == "failed"
    assert "boom on purpose" in (out / "index.html").read_text()
    assert str(out) in captured.err  # where to look


def test_user_error_inside_a_notebook_exits_2(tmp_path, nb_dir, capsys):
    rc = main(["run", "--params", str(smoke_file(tmp_path)), "--notebooks", str(nb_dir), "--out", str(tmp_path / "r"),
               "--only", "01", "--set", "seed=14"])
    assert rc == 2 and "DataError: data.csv: row 3 has no dialogue" in capsys.readouterr().err


@pytest.mark.slow
def test_explore_and_evaluate_write_the_index_page(tmp_path, tiny_model_dir, capsys):
    """The real notebooks 00 and 03 on a tiny model: metrics.json and index.html with the ROUGE table."""
    out = tmp_path / "run"
    shutil.copytree(tiny_model_dir, out / "model")  # stands in for notebook 01's output (training is tested elsewhere)
    rc = main(["run", "--params", str(REPO / "params" / "local-smoke.yaml"), "--only", "00,03", "--out", str(out),
               "--set", "dataset=synthetic:100", "--set", "compare_untuned=false", "--set", "max_new_tokens=8",
               "--set", "bootstrap_samples=20", "--resume"])  # into the folder that holds the model
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"run folder: {out.resolve()}" in printed.splitlines()[-2]
    metrics = json.loads((out / "metrics.json").read_text())["systems"]
    assert set(metrics) == {"finetuned", "lead3", "longest3"}
    assert all(0 <= m["rouge1"] <= 100 and m["n"] == 10 for m in metrics.values())
    page = (out / "index.html").read_text()
    for text in ("ROUGE-1", "ROUGE-Lsum", "lead3", "longest3", "finetuned", f"{metrics['lead3']['rouge1']:.2f}",
                 "href='notebooks/00_explore_samsum.ipynb'", "href='notebooks/03_evaluate.ipynb'",
                 "data:image/png;base64,", "Sample summaries", "dataset: synthetic:100"):
        assert text in page, text
    assert (out / "notebooks" / "03_evaluate.ipynb").is_file() and (out / "explore" / "stats.json").is_file()
    # the notebook's own defaults (local-smoke) were replaced by the resolved params
    executed = nbformat.read(out / "notebooks" / "03_evaluate.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "dataset = \"synthetic:100\"" in injected.source and "compare_untuned = False" in injected.source


def test_kernel_runs_this_interpreter():
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    from flant5_lib.workbench.runner import _uses_this_python, ensure_kernel

    assert _uses_this_python(["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    assert _uses_this_python([sys.executable, "-m", "ipykernel_launcher"])
    assert not _uses_this_python(["/opt/some-other-env/bin/python", "-m", "ipykernel_launcher"])
    name = ensure_kernel()
    assert _uses_this_python(KernelSpecManager().get_kernel_spec(name).argv)


def test_without_a_usable_kernelspec_one_is_registered_privately(monkeypatch):
    """A fresh machine whose only python3 spec runs another interpreter: the runner registers its own."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from flant5_lib.workbench import runner

    def no_spec(self, name):
        raise NoSuchKernel(name)

    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", no_spec)
    monkeypatch.setenv("JUPYTER_PATH", "")
    assert runner.ensure_kernel() == runner.KERNEL_NAME
    import os

    private = os.environ["JUPYTER_PATH"].split(os.pathsep)[0]  # put first, so papermill finds it
    monkeypatch.undo()  # the real lookup and the old JUPYTER_PATH again
    spec = json.loads((Path(private) / "kernels" / runner.KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable


def test_index_page_reads_the_run_folder(tmp_path):
    """report.write_index on hand-made eval files: table values, best per column, clipped runaway predictions."""
    from flant5_lib.workbench import report
    from flant5_lib.fileio import write_json, write_jsonl

    for name, r1, pred in (("finetuned", 51.234, "Amanda will bring cookies."), ("untuned", 0.5, "cheese" * 100)):
        write_json(tmp_path / "eval" / name / "metrics.json", {
            "name": name, "rouge1": r1, "rouge2": r1 / 2, "rougeL": r1 - 1, "rougeLsum": r1 - 1, "n": 1,
            "ci": {"rouge1": [r1 - 3, r1 + 3]}, "dataset": "synthetic:10", "split": "test", "gen_len": 7.0,
            "gen_len_unit": "tokens"})
        write_jsonl(tmp_path / "eval" / name / "predictions.jsonl", [{
            "id": "d1", "dialogue": "Amanda: I baked cookies", "reference": "Amanda baked cookies.", "prediction": pred,
            "rougeL": r1 - 1, "n_turns": 1}])
    info = {"status": "ok", "notebooks": [{"number": "03", "name": "03_evaluate", "output": str(tmp_path / "notebooks" / "03_evaluate.ipynb"),
                                            "status": "ok", "seconds": 12.5, "error": None}], "seconds": 12.5}
    page = report.write_index(tmp_path, info).read_text()
    assert "<td class='num best'>51.23<span class=ci>48.2 – 54.2</span></td>" in page
    assert "Amanda will bring cookies." in page and ("cheese" * 20) in page and ("cheese" * 21) not in page
    assert "12.5 s" in page and "03_evaluate" in page
    written = report.write_run_metrics(tmp_path)
    assert list(json.loads(written.read_text())["systems"]) == ["finetuned", "untuned"]


def test_vertex_session_starts_attaches_and_stops_the_stand_in(tmp_path):
    """What notebooks 02/04/05 do: the first starts the stand-in, the next attaches through the state file."""
    import httpx

    from flant5_lib.config import build_params
    from flant5_lib.workbench.notebook import connect_vertex, state_path

    params = build_params({"run_dir": str(tmp_path / "run")})
    first = connect_vertex(params)
    try:
        assert first.started_here and state_path(tmp_path / "run").is_file()
        api = first.params.vertex_api_endpoint
        assert first.params.staging_bucket.startswith("gs://") and Path(first.params.run_dir).is_absolute()
        second = connect_vertex(params)
        assert not second.started_here and second.params.vertex_api_endpoint == api
        assert "flant5 run" in second.close()  # attached: not its stand-in to stop
        assert httpx.get(f"{api}/_local/health", timeout=5).status_code == 200
    finally:
        assert first.close() == "stand-in stopped"
    assert not state_path(tmp_path / "run").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/_local/health", timeout=2)


def test_trained_model_dir_names_the_notebooks_to_run(tmp_path, tiny_model_dir):
    from flant5_lib.errors import UserError
    from flant5_lib.workbench.notebook import trained_model_dir

    with pytest.raises(UserError, match="run 01_finetune_local"):
        trained_model_dir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "vertex" / "model")
    assert trained_model_dir(tmp_path) == tmp_path / "vertex" / "model"
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    assert trained_model_dir(tmp_path) == tmp_path / "model"



def test_set_reaches_notebook_only_parameters_with_their_type(tmp_path, capsys):
    from flant5_lib.workbench.runner import notebook_inputs

    plan = plan_run(None, {"n_examples": 5, "dataset": "synthetic:100", "model_name": "tiny"}, out=str(tmp_path / "r"),
                    only=["00", "01", "03"], notebooks_dir=NOTEBOOKS_DIR)
    for nb in plan.notebooks:  # all declare n_examples; a Params field and a notebook knob travel together
        inputs = notebook_inputs(plan, nb)
        assert inputs["n_examples"] == 5 and inputs["dataset"] == "synthetic:100"
    rc = main(["run", "--params", str(REPO / "params" / "local-smoke.yaml"), "--only", "00", "--out", str(tmp_path / "x"),
               "--set", "n_examples=many"])
    err = capsys.readouterr().err
    assert rc == 2 and "n_examples" in err and "00_explore_samsum.ipynb declares n_examples as int" in err
    rc = main(["run", "--params", str(REPO / "params" / "local-smoke.yaml"), "--only", "00", "--out", str(tmp_path / "x"),
               "--set", "n_exmaples=2"])
    assert rc == 2 and "n_exmaples: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_live_progress_shows_the_cell_and_elapsed_time_and_plain_lines_otherwise(tmp_path, nb_dir, capsys):
    from flant5_lib.workbench.runner import plan_run, run_plan

    plan = plan_run(str(smoke_file(tmp_path)), {}, out=str(tmp_path / "live"), only=["00"], notebooks_dir=nb_dir)
    lines: list[str] = []
    run_plan(plan, echo=lines.append, live=True)
    err = capsys.readouterr().err
    # one updating line (tqdm's \r), with the cells counted (4 with papermill's injected one) and the elapsed time
    assert re.search(r"\r\[1/1\] 00_marker\.ipynb: cell [0-4]/4, \d\d:\d\d elapsed", err) and "\n" not in err
    assert lines == [lines[0]] and lines[0].startswith("[1/1] 00_marker.ipynb ok in ")
    lines.clear()
    run_plan(plan_run(str(smoke_file(tmp_path)), {}, out=str(tmp_path / "plain"), only=["00"], notebooks_dir=nb_dir),
             echo=lines.append, live=False)
    assert "cell" not in capsys.readouterr().err
    assert lines[0] == "[1/1] 00_marker.ipynb ..." and lines[1].startswith("[1/1] 00_marker.ipynb ok in ")
