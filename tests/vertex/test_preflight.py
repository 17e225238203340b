"""`flant5 vertex preflight` (the rule set, `vertex.rules`): every check, table-driven, plus the shipped params files
and the image table.

No server: preflight reads params, the image/accelerator tables, the Dockerfiles and constraints.txt only.
"""

from __future__ import annotations

import re

import pytest
import yaml

from flant5_lib import vertex
from flant5_lib.cli import main
from flant5_lib.config import load_params
from flant5_lib.errors import ParamsError
from flant5_lib.vertex import images, rules

from tests.helpers import REPO

FILLED = {"gcp_project": "proj-x", "staging_bucket": "gs://bkt/flant5"}
OLD_DEFAULT = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest"  # the old default image
TB = "projects/proj-x/locations/us-central1/tensorboards/7"
SA = "trainer@proj-x.iam.gserviceaccount.com"


def _problems(path: str | None = "params/vertex-a100.yaml", **overrides: object) -> list[str]:
    params = load_params(REPO / path if path else None, {**FILLED, **overrides})
    return rules.problems(params)


@pytest.mark.parametrize("path", ["params/vertex-a100.yaml", "params/vertex-a100-80gb-large.yaml"])
def test_shipped_cloud_params_pass_once_placeholders_are_filled(path: str) -> None:
    assert _problems(path) == []
    raw = load_params(REPO / path)  # as shipped: the templates are named, one line each
    found = rules.problems(raw)
    assert [p.split(":")[0] for p in found] == ["gcp_project", "staging_bucket"]


def test_local_smoke_params_pass_in_local_mode() -> None:
    params = load_params(REPO / "params/local-smoke.yaml")
    assert params.vertex_mode == "local"
    assert vertex.preflight_problems(params) == []
    vertex.require_preflight(params)  # no exception


# (overrides, the parameter the one problem must name, a word of the fix it must give)
CASES = [
    ({"train_accelerator_type": "NVIDIA_TESLA_T4"}, "train_machine_type/train_accelerator_type", "NVIDIA_TESLA_A100"),
    ({"train_accelerator_count": 2}, "train_accelerator_count", "exactly 1"),
    ({"train_machine_type": "n1-standard-8", "train_accelerator_type": "NVIDIA_TESLA_T4",
      "train_accelerator_count": 3}, "train_accelerator_count", "1, 2, 4"),
    ({"deploy_machine_type": "e2-standard-4", "deploy_accelerator_type": "NVIDIA_TESLA_T4",
      "deploy_accelerator_count": 1}, "deploy_machine_type", "takes no accelerator"),
    ({"batch_machine_type": "a2-highgpu-1g"}, "batch_machine_type/batch_accelerator_type", "NVIDIA_TESLA_A100"),
    ({"gcp_region": "europe-west1"}, "train_accelerator_type", "europe-west4"),  # no A100 in europe-west1
    ({"tensorboard_resource": TB}, "service_account", "TensorBoard"),
    ({"tensorboard_resource": "projects/proj-x/locations/europe-west4/tensorboards/7", "service_account": SA},
     "tensorboard_resource", "same region"),
    ({"tensorboard_resource": "tb-7", "service_account": SA}, "tensorboard_resource", "tensorboards/ID"),
    ({"deploy_machine_type": "a2-highgpu-1g", "deploy_accelerator_type": "NVIDIA_TESLA_A100",
      "deploy_accelerator_count": 1, "serving_container_uri": "r/p/flant5/flant5-serve:1"},
     "serving_container_uri", "flant5-serve-gpu"),
    ({"serving_container_uri": "r/p/flant5/flant5-serve-gpu:1"}, "serving_container_uri", "flant5-serve"),
    ({"serving_container_uri": "us-docker.pkg.dev/vertex-ai/prediction/pytorch-cpu.2-4:latest"},
     "serving_container_uri", "torchserve"),
    ({"train_container_uri": "r/p/flant5/flant5-serve:1"}, "train_container_uri", "serving image"),
    ({"train_container_uri": OLD_DEFAULT}, "train_job_kind", "script"),  # container kind on a prebuilt image
    ({"train_container_uri": "registry.example/other/trainer:3", "train_job_kind": "script"},
     "train_container_uri", "params/tables/images.yaml"),
    ({"precision": "bf16", "train_machine_type": "n1-standard-8", "train_accelerator_type": "NVIDIA_TESLA_T4"},
     "precision", "auto"),
    ({"train_preset": "huge"}, "train_preset", "a100-40gb"),
    ({"image_registry": "<region>-docker.pkg.dev/<project>/flant5"}, "image_registry", "--set image_registry"),
    ({"model_artifact_uri": "/tmp/model"}, "model_artifact_uri", "gs://"),
]


@pytest.mark.parametrize(("overrides", "field", "fix"), CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(CASES)])
def test_each_problem_is_one_line_naming_the_parameter_and_the_fix(overrides: dict, field: str, fix: str) -> None:
    found = _problems(**overrides)
    assert len(found) == 1, found
    (line,) = found
    assert line.startswith(field) and fix in line and "\n" not in line


def test_all_problems_come_at_once_and_require_raises_one_params_error() -> None:
    params = load_params(REPO / "params/vertex-a100.yaml", {
        "train_accelerator_type": "NVIDIA_L4", "tensorboard_resource": TB,
        "deploy_accelerator_type": "NVIDIA_TESLA_T4", "deploy_accelerator_count": 1,
        "serving_container_uri": "r/p/flant5/flant5-serve:1"})  # placeholders still in, too
    found = rules.problems(params)
    fields = {line.split(":")[0] for line in found}
    assert {"gcp_project", "staging_bucket", "train_machine_type/train_accelerator_type/train_accelerator_count",
            "service_account", "serving_container_uri"} <= fields
    with pytest.raises(ParamsError) as err:
        rules.require(params)
    lines = str(err.value).splitlines()
    assert err.value.exit_code == 2 and len(lines) == len(found) + 1 and str(len(found)) in lines[0]


def test_the_old_default_image_fails_naming_the_torch_conflict() -> None:
    # the setup: script job on pytorch-gpu.2-4.py310, requirements leaving torch to the image
    found = _problems(train_job_kind="script", train_container_uri=OLD_DEFAULT,
                      train_requirements=["transformers>=5,<6", "datasets>=4"])
    (line,) = found
    assert line.startswith("train_container_uri") and "torch 2.4" in line and "torch>=2.6" in line


def test_the_original_samples_image_fails_naming_its_python_and_torch_not_unknown_image() -> None:
    """The sample's europe-docker.pkg.dev/vertex-ai/training/pytorch-gpu.1-10: Python 3.7 and torch 1.10, from
    Google's table (params/tables/images.yaml), before any request."""
    sample = "europe-docker.pkg.dev/vertex-ai/training/pytorch-gpu.1-10:latest"
    (line,) = _problems(train_job_kind="script", train_container_uri=sample)
    assert "Python 3.7 in the image" in line and "unknown" not in line
    (line,) = _problems(train_job_kind="script", train_container_uri=sample,
                        train_requirements=["transformers>=5,<6"])  # no pins: torch is the image's own
    assert "torch 1.10" in line and "torch>=2.6" in line


def test_the_old_default_image_with_pinned_requirements_fails_naming_the_python_conflict() -> None:
    (line,) = _problems(train_job_kind="script", train_container_uri=OLD_DEFAULT)
    pins = images.pins()
    assert "Python 3.10" in line and f"transformers=={pins['transformers']}" in line


def test_script_requirements_carry_the_projects_torch_exactly() -> None:
    reqs = images.script_requirements(load_params(None))
    pins = images.pins()
    assert f"torch=={pins['torch']}" in reqs and f"transformers=={pins['transformers']}" in reqs
    floor = re.search(r"torch>=([\d.]+)", " ".join(images.train_requirements())).group(1)
    needs = images.load_table()["needs"]["torch"]
    assert needs == f">={floor}"  # pyproject's floor is the one transformers 5 needs


def test_preflight_command_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vertex", "preflight", "--params", str(REPO / "params/vertex-a100.yaml")]) == 2
    err = capsys.readouterr().err
    assert "gcp_project" in err and "staging_bucket" in err
    sets = [a for k, v in FILLED.items() for a in ("--set", f"{k}={v}")]
    assert main(["vertex", "preflight", "--params", str(REPO / "params/vertex-a100.yaml"), *sets]) == 0
    assert "flant5-train" in capsys.readouterr().out
    assert main(["vertex", "train", "--dry-run", "--params", str(REPO / "params/vertex-a100.yaml"), *sets,
                 "--set", f"train_container_uri={OLD_DEFAULT}", "--set", "train_job_kind=script"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Python 3.10" in err  # a dry run runs preflight and prints no request


def test_images_follow_the_deploy_hardware_and_the_registry() -> None:
    p = load_params(None, {**FILLED, "gcp_region": "europe-west4"})
    assert images.train_image(p) == "europe-west4-docker.pkg.dev/proj-x/flant5/flant5-train:latest"
    assert images.serving_image(p).endswith("/flant5-serve:latest")
    gpu = p.with_overrides(deploy_machine_type="g2-standard-8", deploy_accelerator_type="NVIDIA_L4",
                           deploy_accelerator_count=1, image_tag="v2")
    assert images.serving_image(gpu) == "europe-west4-docker.pkg.dev/proj-x/flant5/flant5-serve-gpu:v2"


def test_project_images_are_read_from_their_dockerfiles() -> None:
    info = images.describe("us-central1-docker.pkg.dev/p/flant5/flant5-train:latest")
    assert info is not None and info.source == "project" and info.device == "gpu"
    assert info.python.startswith("3.11") and info.torch == images.pins()["torch"]
    assert images.container_command(info.dockerfile) == ["python", "-m", "flant5_lib.vertex.task"]
    assert images.container_command(info.dockerfile, args=["--x"]) == ["python", "-m", "flant5_lib.vertex.task", "--x"]
    serve = images.describe("r/flant5-serve-gpu:1")
    assert serve.dockerfile == REPO / "serving" / "Dockerfile" and serve.build_args == (("VARIANT", "gpu"),)
    assert serve.python.startswith("3.11") and images.container_command(serve.dockerfile)[:2] == ["sh", "-c"]
    assert images.describe("registry.example/unknown:1") is None


def test_image_tables_are_dated_and_well_formed() -> None:
    table = yaml.safe_load((REPO / "params/tables/images.yaml").read_text())
    assert re.match(r"\d{4}-\d{2}-\d{2}", table["read_on"])
    for key, row in table["prebuilt_images"].items():
        assert row["role"] in ("train", "serve") and row["device"] in ("cpu", "gpu") and row["python"], key
        assert (row["device"] == "gpu") == bool(row.get("cuda")), key
    for row in table["project_images"].values():
        assert (REPO / row["dockerfile"]).is_file()
    acc = yaml.safe_load((REPO / "params/tables/accelerators.yaml").read_text())
    known = set(acc["accelerator_types"])
    assert all(set(gpus) <= known for gpus in acc["regions"].values())
    assert "regions_read_on" in acc
