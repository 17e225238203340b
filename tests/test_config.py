"""The typed parameter model: defaults, overrides, and one error line naming every bad field."""

from __future__ import annotations

import pytest

from flant5_lib.config import Params, build_params, load_params, params_from_namespace, parse_set
from flant5_lib.errors import ParamsError


def test_every_field_has_help_text():
    missing = [n for n, f in Params.model_fields.items() if not f.description]
    assert missing == []


def test_all_problems_are_named_in_one_error():
    with pytest.raises(ParamsError) as err:
        build_params({"learning_rat": 1e-4, "num_beams": "many", "precision": "fp16"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "learning_rat: unknown key" in msg and "num_beams:" in msg and "fp16 overflows" in msg


def test_yaml_overrides_then_set(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("# a comment\ndataset: synthetic:100\nlearning_rate: 1.0e-3\n")
    p = load_params(f, parse_set(["learning_rate=2e-3", "lora=true", "eval_steps=null"]))
    assert p.dataset == "synthetic:100" and p.learning_rate == 2e-3 and p.lora is True and p.eval_steps is None


def test_bad_yaml_and_missing_file_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("dataset: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: line \d+ not valid YAML"):
        load_params(f)
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="expected key=value"):
        parse_set(["learning_rate"])


def test_bucket_must_be_gs_uri():
    with pytest.raises(ParamsError, match="staging_bucket: 'my-bucket' must start with gs://"):
        build_params({"staging_bucket": "my-bucket"})


def test_params_from_notebook_namespace_picks_only_fields():
    ns = {"dataset": "synthetic:50", "run_dir": "/tmp/x", "some_local": 3, "__name__": "__main__"}
    p = params_from_namespace(ns)
    assert p.dataset == "synthetic:50" and p.run_dir == "/tmp/x"
