"""serving/Dockerfile structure (Docker cannot build here), for both of its variants (`--build-arg VARIANT=cpu|gpu`,
resolved stage by stage as BuildKit does): pinned slim base, pinned deps and the variant's torch, non-root user,
port, and the CMD that tests/serve/test_server.py runs."""

from __future__ import annotations

import re

import pytest

from flant5_lib.vertex import images
from tests.helpers.serve import DOCKERFILE, REPO, dockerfile_cmd

VARIANTS = ["cpu", "gpu"]


def _image(variant: str | None) -> images.DockerImage:
    return images.dockerfile_image(DOCKERFILE, None if variant is None else {"VARIANT": variant})


def _env(image: images.DockerImage) -> dict[str, str]:
    out: dict[str, str] = {}
    for word, rest in image.instructions:
        if word == "ENV":
            out.update(pair.split("=", 1) for pair in rest.split())
    return out


def test_the_default_build_is_the_cpu_variant_and_an_unknown_variant_has_no_python_base() -> None:
    assert _image(None) == _image("cpu") != _image("gpu")
    assert images.dockerfile_python(DOCKERFILE, {"VARIANT": "tpu"}) is None  # `FROM variant-tpu`: not a stage here


@pytest.mark.parametrize("variant", VARIANTS)
def test_base_image_is_a_pinned_slim_python(variant: str) -> None:
    base = _image(variant).base
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert images.dockerfile_python(DOCKERFILE, {"VARIANT": variant}) == base.split(":")[1].split("-")[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_gets_its_own_torch_and_the_build_checks_it(variant: str) -> None:
    """CPU: torch from the CPU wheel index. GPU: PyPI's default index (its Linux torch is the CUDA build). The RUN
    that installs fails the build when the torch that arrived is not the variant's."""
    image = _image(variant)
    env = _env(image)
    assert env["FLANT5_IMAGE_VARIANT"] == variant
    index = env.get("PIP_EXTRA_INDEX_URL", "") + env.get("PIP_INDEX_URL", "")
    assert index == ("https://download.pytorch.org/whl/cpu" if variant == "cpu" else "")
    (install,) = [rest for word, rest in image.instructions if word == "RUN" and "pip install" in rest]
    assert "download.pytorch.org" not in install  # the index comes from the variant only
    assert "assert bool(torch.version.cuda) == (v == 'gpu')" in install
    assert "os.environ['FLANT5_IMAGE_VARIANT']" in install


@pytest.mark.parametrize("variant", VARIANTS)
def test_dependencies_pinned_and_sources_exist(variant: str) -> None:
    ins = _image(variant).instructions
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install" in runs and "-c constraints.txt" in runs
    copies = [rest.split() for word, rest in ins if word == "COPY"]
    assert copies
    for parts in copies:
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src} missing from the build context (repo root)"
    assert (REPO / "constraints.txt").is_file()


@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_as_non_root_and_exposes_8080(variant: str) -> None:
    ins = _image(variant).instructions
    words = [w for w, _ in ins]
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8080") in ins
    assert words.index("USER") < words.index("CMD")


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_serving_cache_is_owned_by_the_app_user(variant: str) -> None:
    """CTranslate2 conversions go to FLANT5_CACHE_DIR (never into the model folder): it must be writable by the
    user the server runs as."""
    image = _image(variant)
    user = image.last("USER")
    cache = _env(image)["FLANT5_CACHE_DIR"]
    setup = " ".join(rest for word, rest in image.instructions if word == "RUN" and "useradd" in rest)
    assert "useradd" in setup and f" {user}" in setup
    assert f"mkdir -p {cache}" in setup
    owned = re.search(rf"chown -R {user}:{user} ([^&]+)", setup)
    assert owned and any(cache == d or cache.startswith(d.rstrip("/") + "/") for d in owned.group(1).split()), setup


@pytest.mark.parametrize("variant", VARIANTS)
def test_cmd_is_the_uvicorn_command_the_tests_run(variant: str) -> None:
    workdir, cmd = dockerfile_cmd()
    assert workdir.endswith("/serving") and (REPO / "serving" / "main.py").is_file()
    assert cmd == ("uvicorn main:app --host 0.0.0.0 --port ${AIP_HTTP_PORT:-8080} "
                   "--timeout-graceful-shutdown ${FLANT5_SERVE_SHUTDOWN_TIMEOUT_S:-25}")
    # the same server and command in both variants, and the same the test helper reads
    assert images.dockerfile_command_part(DOCKERFILE, "CMD", {"VARIANT": variant}) == ["sh", "-c", f"exec {cmd}"]
    assert _image(variant).last("WORKDIR") == workdir
    main_py = (REPO / "serving" / "main.py").read_text()
    assert "from flant5_lib.serve.app import create_app" in main_py and "app = create_app()" in main_py


@pytest.mark.parametrize("variant", VARIANTS)
def test_installs_only_the_serve_extra_and_drains_within_the_grace_period(variant: str) -> None:
    """The image carries the serving stack only (no Jupyter, no Vertex SDK); its drain default is the Params one."""
    import tomllib

    from flant5_lib.config import Params

    runs = [rest for word, rest in _image(variant).instructions if word == "RUN" and "pip install" in rest]
    assert len(runs) == 1 and re.search(r'"\.\[serve\]"', runs[0]), runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serve = " ".join(extras["serve"])
    for heavy in ("papermill", "jupyter", "aiplatform", "datasets", "matplotlib", "tensorboard", "flant5-lib["):
        assert heavy not in serve, heavy
    _, cmd = dockerfile_cmd()
    default = Params().serve_shutdown_timeout_s
    assert f"--timeout-graceful-shutdown ${{FLANT5_SERVE_SHUTDOWN_TIMEOUT_S:-{default}}}" in cmd and default < 30
