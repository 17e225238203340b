"""Which container image a job or a deployment uses, and what is inside it (Python, torch, CUDA, GPU or CPU).

The project's own images (training/Dockerfile, serving/Dockerfile, serving/Dockerfile.gpu) are the defaults: their
Python comes from the Dockerfile's FROM line and their packages from constraints.txt, so a table cannot drift from
them. Google's prebuilt images are rows of params/tables/images.yaml (read on a stated date). Preflight and the local
stand-in both ask this module, so the stand-in refuses exactly what preflight would.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


from flant5_lib.config import Params
from flant5_lib.errors import CloudError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_TABLE = PROJECT_ROOT / "params" / "tables" / "images.yaml"
TRAIN_IMAGE, SERVE_IMAGE, SERVE_GPU_IMAGE = "flant5-train", "flant5-serve", "flant5-serve-gpu"
_REGISTRY_PREFIX = re.compile(r"^(?:[a-z0-9-]+-)?docker\.pkg\.dev/")


@dataclass(frozen=True)
class ImageInfo:
    """What is known about one image URI."""

    uri: str
    name: str  # project image name, or the table key of a prebuilt image
    source: str  # "project" | "prebuilt"
    role: str  # "train" | "serve"
    device: str  # "gpu" | "cpu"
    python: str | None
    torch: str | None
    cuda: str | None
    dockerfile: Path | None = None
    server: str = "flant5"  # "flant5" (this project's server) or e.g. "torchserve"


@lru_cache(maxsize=4)
def load_table(path: str | None = None) -> dict[str, Any]:
    from flant5_lib.vertex.tables import load_table as read

    return read(Path(path) if path else DEFAULT_TABLE, ("read_on", "project_images", "prebuilt_images", "needs"),
                "params/tables/images.yaml")


# --- what the project pins ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def pins() -> dict[str, str]:
    """Exact versions from constraints.txt (name -> version), the versions every image of the project installs."""
    out: dict[str, str] = {}
    path = PROJECT_ROOT / "constraints.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, _, version = line.partition("==")
                out[_norm(name)] = version.strip()
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip().lower())


@lru_cache(maxsize=1)
def pyproject() -> dict[str, Any]:
    path = PROJECT_ROOT / "pyproject.toml"
    if not path.is_file():
        raise CloudError(f"{path}: not found (flant5_lib is not a source checkout); use the project's training image")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def train_requirements() -> list[str]:
    """Base dependencies plus the [train] extra as pyproject.toml declares them (torch included: the image's own
    torch is kept only when it satisfies the range, so transformers 5 never meets a torch < 2.6)."""
    proj = pyproject()["project"]
    return [*proj["dependencies"], *proj["optional-dependencies"]["train"]]


def requirement_name(req: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0])


def requirement_spec(req: str) -> str:
    """The version part of a requirement ('torch>=2.6,<2.14' -> '>=2.6,<2.14')."""
    head = req.split(";", 1)[0].strip()
    return head[len(re.split(r"[<>=!~ ]", head, maxsplit=1)[0]):].strip()


# --- URIs -------------------------------------------------------------------------------------------------------


def registry(params: Params) -> str:
    """Artifact Registry repository the project's images are pushed to."""
    if params.image_registry:
        return params.image_registry.rstrip("/")
    project = params.gcp_project or "<gcp_project>"
    return f"{params.gcp_region}-docker.pkg.dev/{project}/flant5"


def project_image_uri(params: Params, name: str) -> str:
    return f"{registry(params)}/{name}:{params.image_tag}"


def train_image(params: Params) -> str:
    """The training image: train_container_uri, or the project's image built from training/Dockerfile."""
    return params.train_container_uri or project_image_uri(params, TRAIN_IMAGE)


def serving_image(params: Params, accelerator_type: str | None = None) -> str:
    """The serving image: serving_container_uri, or the project's CPU image, or its GPU image when the deployment
    has an accelerator (a CPU torch never sees the GPU you pay for)."""
    if params.serving_container_uri:
        return params.serving_container_uri
    acc = params.deploy_accelerator_type if accelerator_type is None else accelerator_type
    return project_image_uri(params, SERVE_GPU_IMAGE if acc else SERVE_IMAGE)


def _strip(uri: str) -> tuple[str, str]:
    """(path without registry host and tag, last path component without tag)."""
    no_tag = re.sub(r"(@sha256:[0-9a-f]+|:[\w.-]+)$", "", uri.strip())
    path = _REGISTRY_PREFIX.sub("", no_tag)
    return path, no_tag.rsplit("/", 1)[-1]


def describe(uri: str, table: dict[str, Any] | None = None) -> ImageInfo | None:
    """What the table and the Dockerfiles say about an image; None when it is unknown."""
    table = table or load_table()
    path, last = _strip(uri)
    for key, row in table["prebuilt_images"].items():
        if path == key:
            return ImageInfo(uri, key, "prebuilt", row["role"], row["device"], row.get("python"),
                             _s(row.get("torch")), _s(row.get("cuda")), None, row.get("server", "flant5"))
    row = table["project_images"].get(last)
    if row is not None and not uri.startswith("us-docker.pkg.dev/vertex-ai/"):
        dockerfile = PROJECT_ROOT / row["dockerfile"]
        return ImageInfo(uri, last, "project", row["role"], row["device"], dockerfile_python(dockerfile),
                         pins().get("torch"), "bundled" if row["device"] == "gpu" else None, dockerfile)
    return None


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


def dockerfile_python(dockerfile: Path) -> str | None:
    """'3.11.11' from `FROM python:3.11.11-slim...` (None when the file or the line is missing)."""
    if not dockerfile.is_file():
        return None
    m = re.search(r"^FROM\s+(?:\S+/)?python:(\d+\.\d+(?:\.\d+)?)", dockerfile.read_text(encoding="utf-8"),
                  re.MULTILINE)
    return m.group(1) if m else None


def dockerfile_command_part(dockerfile: Path, kind: str) -> list[str]:
    """The last ENTRYPOINT or CMD of a Dockerfile as a list (exec form; the shell form runs under /bin/sh -c)."""
    lines = re.findall(rf"^{kind}\s+(.+)$", dockerfile.read_text(encoding="utf-8"), re.MULTILINE)
    if not lines:
        return []
    raw = lines[-1].strip()
    return list(json.loads(raw)) if raw.startswith("[") else ["/bin/sh", "-c", raw]


def container_command(dockerfile: Path, command: list[str] | None = None, args: list[str] | None = None) -> list[str]:
    """What Docker runs: `command` replaces ENTRYPOINT, `args` replace CMD (Vertex's containerSpec semantics)."""
    entry = list(command) if command else dockerfile_command_part(dockerfile, "ENTRYPOINT")
    tail = list(args) if args else ([] if command else dockerfile_command_part(dockerfile, "CMD"))
    return [*entry, *tail]
