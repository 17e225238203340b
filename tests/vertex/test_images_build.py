"""The images and their build: cloudbuild.yaml, the Dockerfiles (serving/Dockerfile in its cpu and gpu variants) and
`flant5 vertex build` agree.

No docker and no gcloud here (neither can run offline); these read the files the build reads and check that the
names the jobs ask Vertex to pull are the ones the build pushes.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from flant5_lib.cli import main
from flant5_lib.vertex import images

from tests.helpers import REPO


def _dockerfile(path: str) -> str:
    return (REPO / path).read_text()


def test_cloudbuild_builds_each_project_image_from_its_dockerfile() -> None:
    cfg = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    table = images.load_table()["project_images"]
    built = {}
    for step in cfg["steps"]:
        args = step["args"]
        tag = args[args.index("-t") + 1]
        build_args = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--build-arg")
        built[tag.split("/")[-1].split(":")[0]] = (args[args.index("-f") + 1], build_args)
        assert args[-1] == "."  # the repository root: the Dockerfiles copy pyproject.toml and flant5_lib/
        if len(re.findall(r"^FROM ", _dockerfile(args[args.index("-f") + 1]), re.MULTILINE)) > 1:
            assert "DOCKER_BUILDKIT=1" in step.get("env", [])  # only the stages the chosen variant needs are built
    assert built == {name: (row["dockerfile"], {k: str(v) for k, v in row.get("build_args", {}).items()})
                     for name, row in table.items()}
    assert sorted(cfg["images"]) == sorted(f"${{_REGISTRY}}/{n}:${{_TAG}}" for n in table)
    assert set(cfg["substitutions"]) == {"_REGISTRY", "_TAG"}


@pytest.mark.parametrize("name", [images.TRAIN_IMAGE, images.SERVE_IMAGE, images.SERVE_GPU_IMAGE])
def test_dockerfiles_pin_run_non_root_and_install_their_extra(name: str) -> None:
    """Each project image as it is built (its Dockerfile with its row's build args, stage by stage)."""
    info = images.describe(f"r/{name}:1")
    built = images.dockerfile_image(info.dockerfile, dict(info.build_args))
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-\S+", built.base)  # exact Python, read by preflight
    assert info.python == built.base.split(":")[1].split("-")[0]
    runs = " ".join(rest for word, rest in built.instructions if word == "RUN")
    assert "-c constraints.txt" in runs  # exact pins
    assert built.last("USER") not in (None, "root", "0")
    # the training image also runs the release pipeline's steps, which import kfp (pyproject's [pipeline] extra)
    assert {"train": '".[train,pipeline]"', "serve": '".[serve]"'}[info.role] in runs


def test_gpu_serving_image_gets_cuda_torch_and_the_cpu_image_does_not() -> None:
    gpu, cpu = images.describe("r/flant5-serve-gpu:1"), images.describe("r/flant5-serve:1")
    assert (gpu.device, cpu.device) == ("gpu", "cpu") and gpu.dockerfile == cpu.dockerfile
    env = {info.device: " ".join(rest for word, rest in images.dockerfile_image(
        info.dockerfile, dict(info.build_args)).instructions if word == "ENV") for info in (gpu, cpu)}
    assert "download.pytorch.org/whl/cpu" in env["cpu"] and "download.pytorch.org/whl/cpu" not in env["gpu"]
    assert "FLANT5_IMAGE_VARIANT=gpu" in env["gpu"] and "torch.version.cuda" in _dockerfile("serving/Dockerfile")
    # same server, same command: only the torch build differs
    assert images.dockerfile_command_part(gpu.dockerfile, "CMD", dict(gpu.build_args)) == \
        images.dockerfile_command_part(cpu.dockerfile, "CMD", dict(cpu.build_args))


def test_build_dry_run_prints_the_gcloud_command_with_the_params_image_uris(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["vertex", "build", "--params", str(REPO / "params/vertex-a100.yaml"), "--set", "gcp_project=proj-x",
                 "--set", "gcp_region=europe-west4", "--set", "image_tag=v3", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)
    assert got["command"][:3] == ["gcloud", "builds", "submit"] and "--config=cloudbuild.yaml" in got["command"]
    assert "--substitutions=_REGISTRY=europe-west4-docker.pkg.dev/proj-x/flant5,_TAG=v3" in got["command"]
    assert got["images"]["flant5-train"] == "europe-west4-docker.pkg.dev/proj-x/flant5/flant5-train:v3"
    assert "staging_bucket" in err  # preflight ran: the bucket is still a template (fine for a build)


def test_build_without_a_project_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vertex", "build", "--params", str(REPO / "params/vertex-a100.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gcp_project" in err


def test_every_vertex_command_has_a_description_and_an_example_whose_paths_exist(
        capsys: pytest.CaptureFixture[str]) -> None:
    from flant5_lib.commands.vertex import _ACTIONS

    for name in _ACTIONS:
        with pytest.raises(SystemExit):
            main(["vertex", name, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and f"flant5 vertex {name}" in text, name
        for path in re.findall(r"\b((?:params|serving|training)/[\w./-]+\.(?:yaml|json))", text):
            assert (REPO / path).is_file(), (name, path)
