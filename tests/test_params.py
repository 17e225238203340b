"""Every shipped params file validates, says how to run it, and means the same through papermill and `flant5 run`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from flant5_lib.cli import main
from flant5_lib.config import Params, load_params, params_from_namespace, read_params_file

from tests.helpers import REPO
PARAMS_DIR = REPO / "params"
NOTEBOOKS_DIR = REPO / "notebooks"
# Vertex data tables (prices, accelerators per region, image contents) live in params/ but are not Params files.
NOT_PARAMS = {"prices.yaml", "accelerators.yaml", "images.yaml"}
PARAM_FILES = sorted(p for p in PARAMS_DIR.glob("*.yaml") if p.name not in NOT_PARAMS)
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebook_defaults(path: Path) -> dict[str, object]:
    """The notebook's parameters-cell defaults, as papermill reads them."""
    import papermill

    return {name: ast.literal_eval(spec["default"]) for name, spec in papermill.inspect_notebook(str(path)).items()}


def test_the_expected_files_exist():
    names = {p.name for p in PARAM_FILES}
    assert {"local-smoke.yaml", "samsum-flan-t5-base.yaml", "vertex-a100.yaml", "vertex-a100-80gb-large.yaml"} <= names


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_params_file_validates_and_says_how_to_run_it(path):
    params = load_params(path)
    assert isinstance(params, Params)
    header = path.read_text(encoding="utf-8").split("\n\n")[0]
    assert header.startswith("#") and ("flant5 run" in header or "workbench.sh" in header)
    assert read_params_file(path), f"{path.name} overrides nothing"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_papermill_with_the_file_equals_flant5_run(path):
    """`papermill NB OUT -f FILE` keeps each notebook's own defaults for keys the file does not set; those defaults
    are the local-smoke values, so a file must set every key a notebook declares with a non-default value."""
    expected = load_params(path).model_dump()
    values = read_params_file(path)
    for nb in NOTEBOOKS:
        namespace = {**notebook_defaults(nb), **values}
        got = params_from_namespace(namespace).model_dump()
        diff = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
        assert diff == {}, f"{path.name} through papermill on {nb.name} differs: {diff}"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_papermill_passes_every_key_of_the_file_without_warnings(path):
    """papermill warns "Passed unknown parameter" for each key a notebook's parameters cell does not declare."""
    import papermill

    keys = set(read_params_file(path))
    for nb in NOTEBOOKS:
        missing = keys - set(papermill.inspect_notebook(str(nb)))
        assert not missing, f"papermill {nb.name} -f params/{path.name} would warn about {sorted(missing)}"


def test_notebook_defaults_are_the_local_smoke_values():
    smoke = read_params_file(PARAMS_DIR / "local-smoke.yaml")
    defaults = Params().model_dump()
    for nb in NOTEBOOKS:
        for name, value in notebook_defaults(nb).items():
            if name in Params.model_fields and name != "run_dir":
                assert value == smoke.get(name, defaults[name]), f"{nb.name}: {name} = {value!r}"
        assert notebook_defaults(nb)["run_dir"] == "../runs/nbval"  # nbval runs from notebooks/; never the demo's folder


def test_cloud_files_hold_placeholders_not_real_ids():
    for name in ("vertex-a100.yaml", "vertex-a100-80gb-large.yaml"):
        p = load_params(PARAMS_DIR / name)
        assert p.vertex_mode == "cloud" and "<" in p.gcp_project and "<" in p.staging_bucket
    big = load_params(PARAMS_DIR / "vertex-a100-80gb-large.yaml")
    assert big.train_machine_type == "a2-ultragpu-1g" and big.train_accelerator_type == "NVIDIA_A100_80GB"
    assert big.model_name == "google/flan-t5-large"


def test_local_smoke_is_offline():
    p = load_params(PARAMS_DIR / "local-smoke.yaml")
    assert p.model_name == "tiny" and p.dataset.startswith("synthetic") and p.vertex_mode == "local"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("learning_rat: 0.1\n", "learning_rat: unknown key"),
        ("num_train_epochs: many\n", "num_train_epochs:"),
        ("vertex_mode: moon\n", "vertex_mode:"),
        ("dataset: [a, b]\n", "dataset:"),
    ],
)
def test_params_check_names_the_field_in_one_line(tmp_path, capsys, text, field):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["params", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "bad.yaml" in err


def test_params_check_accepts_every_shipped_file(capsys):
    assert main(["params", "check", *map(str, PARAM_FILES)]) == 0
    assert capsys.readouterr().out.count(": ok") == len(PARAM_FILES)


def test_yaml_files_parse_as_flat_mappings():
    for path in PARAM_FILES:
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict) and all(not isinstance(v, dict) for v in data.values())
