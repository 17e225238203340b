"""serving/Dockerfile structure (Docker cannot build here): pinned slim base, pinned deps, non-root user, port, and
the CMD that tests/test_server.py runs."""

from __future__ import annotations

import re

from tests.helpers.serve import DOCKERFILE, REPO, dockerfile_cmd


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_image_is_a_pinned_slim_python() -> None:
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", froms[0]), froms[0]


def test_dependencies_pinned_and_sources_exist() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "pip install" in runs and "-c constraints.txt" in runs
    copies = [rest.split() for word, rest in _instructions() if word == "COPY"]
    for parts in copies:
        for src in parts[:-1]:
            if src != "README.md":  # written by the lead at the repository root
                assert (REPO / src).exists(), f"COPY source {src} missing from the build context (repo root)"
    assert (REPO / "constraints.txt").is_file()


def test_runs_as_non_root_and_exposes_8080() -> None:
    ins = _instructions()
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "8080") in ins
    assert [w for w, _ in ins].index("USER") < [w for w, _ in ins].index("CMD")


def test_cmd_is_the_uvicorn_command_the_tests_run() -> None:
    workdir, cmd = dockerfile_cmd()
    assert workdir.endswith("/serving") and (REPO / "serving" / "main.py").is_file()
    assert cmd == ("uvicorn main:app --host 0.0.0.0 --port ${AIP_HTTP_PORT:-8080} "
                   "--timeout-graceful-shutdown ${FLANT5_SERVE_SHUTDOWN_TIMEOUT_S:-25}")
    main_py = (REPO / "serving" / "main.py").read_text()
    assert "from flant5_lib.serve.app import create_app" in main_py and "app = create_app()" in main_py


def test_installs_only_the_serve_extra_and_drains_within_the_grace_period() -> None:
    """The image carries the serving stack only (no Jupyter, no Vertex SDK); its drain default is the Params one."""
    import tomllib

    from flant5_lib.config import Params

    runs = [rest for word, rest in _instructions() if word == "RUN" and "pip install" in rest]
    assert len(runs) == 1 and re.search(r'"\.\[serve\]"', runs[0]), runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serve = " ".join(extras["serve"])
    for heavy in ("papermill", "jupyter", "aiplatform", "datasets", "matplotlib", "tensorboard", "flant5-lib["):
        assert heavy not in serve, heavy
    _, cmd = dockerfile_cmd()
    default = Params().serve_shutdown_timeout_s
    assert f"--timeout-graceful-shutdown ${{FLANT5_SERVE_SHUTDOWN_TIMEOUT_S:-{default}}}" in cmd and default < 30
