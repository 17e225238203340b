"""`flant5 run` finds a mistake before the first notebook starts: in seconds, in one line, naming the `--set` fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flant5_lib import hub
from flant5_lib.cli import main
from flant5_lib.errors import DataError, ModelError
from flant5_lib.procs import free_port

from tests.helpers import REPO

SMOKE = str(REPO / "params" / "local-smoke.yaml")  # absolute: the tests pass from any working directory


def flant5(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """The real CLI in a fresh process (imports included in the time, as a user waits for them)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flant5_lib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stderr.strip(), time.perf_counter() - t0


def test_offline_hub_model_fails_in_seconds_with_one_line(tmp_path):
    rc, err, seconds = flant5("run", "--params", "params/samsum-flan-t5-base.yaml", "--out", str(tmp_path / "r"),
                              env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")})
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "model_name: 'google/flan-t5-base'" in err and "HF_HUB_OFFLINE=1" in err and "--set model_name=" in err
    assert seconds < 45, f"took {seconds:.1f} s"  # hang guard, not a speed claim: the hub client retries for minutes
    assert not (tmp_path / "r").exists()


def test_unreachable_hub_dataset_fails_in_seconds(tmp_path):
    """No HF_HUB_OFFLINE: the hub itself is probed (here a closed local port stands for an unreachable hub)."""
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(tmp_path / "c"),
           "HF_DATASETS_CACHE": str(tmp_path / "d")}
    rc, err, seconds = flant5("run", "--params", SMOKE, "--set", "dataset=knkarthick/samsum",
                              "--only", "00", "--out", str(tmp_path / "r"), env=env)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "dataset: 'knkarthick/samsum'" in err and "ConnectionRefusedError" in err and "--set dataset=" in err
    assert seconds < 45, f"took {seconds:.1f} s"  # hang guard, not a speed claim: the hub client retries for minutes


def test_a_cached_hub_id_passes_offline(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--google--flan-t5-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.require_hub("google/flan-t5-base")  # cached: no error
    with pytest.raises(ModelError, match="google/flan-t5-large"):
        hub.require_hub("google/flan-t5-large")
    with pytest.raises(DataError, match="dataset: 'knkarthick/samsum'"):
        hub.require_hub("knkarthick/samsum", repo_type="dataset", field="dataset")


def test_hub_ids_are_told_from_paths(tmp_path):
    assert hub.looks_like_hub_id("google/flan-t5-base") and hub.looks_like_hub_id("t5-small")
    assert not hub.looks_like_hub_id("./model") and not hub.looks_like_hub_id("gs://b/m")
    (tmp_path / "m").mkdir()
    assert not hub.looks_like_hub_id(str(tmp_path / "m"))


def _folder_with(tmp_path: Path, *splits: str) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for split in splits:
        (folder / f"{split}.jsonl").write_text('{"id": "1", "dialogue": "A: hi\\nB: hello", "summary": "They greet."}\n')
    return folder


def test_missing_train_split_is_named_with_its_fix(tmp_path, capsys):
    data = _folder_with(tmp_path, "validation", "test")
    rc = main(["run", "--params", SMOKE, "--set", f"dataset={data}", "--only", "01",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "has no train split" in err and "--set missing_split=carve" in err
    # the same folder is fine for exploring and, with carve, for training
    from flant5_lib.config import load_params
    from flant5_lib.workbench.inputs import check_dataset

    check_dataset(load_params(SMOKE, {"dataset": str(data)}), ["00"])
    check_dataset(load_params(SMOKE, {"dataset": str(data), "missing_split": "carve"}), ["01"])


def test_a_bad_data_file_is_named_before_any_notebook(tmp_path, capsys):
    data = _folder_with(tmp_path, "train", "validation")
    (data / "test.jsonl").write_text('{"id": "1", "dialogue": "A: hi"}\n')  # no summary
    rc = main(["run", "--params", SMOKE, "--set", f"dataset={data}", "--only", "00",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "test.jsonl" in err and len(err.splitlines()) == 1


def test_evaluating_without_a_trained_model_is_named(tmp_path, capsys):
    rc = main(["run", "--params", SMOKE, "--only", "03", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no trained model for notebook 03" in err and "01" in err


def test_the_vertex_preflight_runs_for_cloud_notebooks(tmp_path, capsys):
    rc = main(["run", "--params", str(REPO / "params" / "vertex-a100.yaml"), "--only", "00,02",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "gcp_project" in err and "staging_bucket" in err


@pytest.mark.parametrize(("field", "fix"), [("dataset", "--set dataset=/path/to/samsum"),
                                            ("model_name", "--set model_name=tiny")])
def test_a_missing_local_path_is_named_with_its_fix(tmp_path, capsys, field, fix):
    """A path that does not exist (and cannot be a hub id): one line naming the parameter, the path and the fix."""
    missing = tmp_path / "no" / "such-folder"
    rc = main(["run", "--params", SMOKE, "--set", f"{field}={missing}", "--only", "00", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("flant5 run: error: ") and f"{field}: {str(missing)!r}" in err and fix in err
    assert not (tmp_path / "r").exists()  # stopped before the first notebook
