"""Which container image a job or a deployment uses, and what is inside it (Python, torch, CUDA, GPU or CPU).

The project's own images (training/Dockerfile, and serving/Dockerfile built as its cpu or gpu VARIANT) are the
defaults: their Python comes from the Dockerfile's base image and their packages from constraints.txt, so a table
cannot drift from them. Google's prebuilt images are rows of params/tables/images.yaml (read on a stated date). Whether an image can
run a job's requirements (its Python, its torch) is answered here too. The rule set (`rules`) and the local stand-in
both ask this module, so the stand-in refuses exactly what `flant5 vertex preflight` would.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError
from flant5_lib.vertex.tables import PROJECT_ROOT
from flant5_lib.vertex.tables import load_table as read_table

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
    build_args: tuple[tuple[str, str], ...] = ()  # the --build-arg pairs the project image is built with


@lru_cache(maxsize=4)
def load_table(path: str | None = None) -> dict[str, Any]:
    return read_table(Path(path) if path else DEFAULT_TABLE, ("read_on", "project_images", "prebuilt_images", "needs"),
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


def script_requirements(params: Params) -> list[str]:
    """pip requirements of a `script` job: train_requirements, or the project's base + [train] dependencies pinned
    to constraints.txt (torch included, so the image's older torch is replaced instead of silently kept)."""
    if params.train_requirements is not None:
        return list(params.train_requirements)
    exact = pins()
    out = []
    for req in train_requirements():
        name = requirement_name(req)
        out.append(f"{name}=={exact[name]}" if name in exact else req)
    return out


# --- what an image can run ----------------------------------------------------------------------------------


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets a PEP 440 specifier (packaging is present wherever pip is)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    base = ".".join(map(str, _version_tuple(version))) or version
    return Version(base) in SpecifierSet(spec) if spec else True


def needs_torch() -> str:
    """The torch range transformers 5 needs (images.yaml `needs.torch`; pyproject's floor says the same)."""
    return str(load_table()["needs"]["torch"])


def _requires_python(name: str, version: str) -> str | None:
    """Requires-Python of an exact pin, from the installed distribution when it is that very version."""
    try:
        meta = metadata.metadata(name)
    except metadata.PackageNotFoundError:
        return None
    if _version_tuple(meta["Version"]) != _version_tuple(version):
        return None
    return meta.get("Requires-Python")


def python_conflicts(python: str, requirements: list[str]) -> list[str]:
    """'name==ver (Python >=3.11)' for each exact pin whose wheels need a newer Python than the image has."""
    out = []
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([\w.]+)$", req.strip())
        if not m:
            continue
        needs = _requires_python(m.group(1), m.group(2))
        full = python if python.count(".") >= 2 else python + ".0"  # an unknown patch level counts as .0
        if needs and not satisfies(full, needs):
            out.append(f"{m.group(1)}=={m.group(2)} (Python {needs})")
    return out


def requirement_conflicts(info: ImageInfo, requirements: list[str]) -> list[str]:
    """Why a job with these pip requirements fails on this image: the torch transformers 5 needs, and pins whose
    wheels need a newer Python. Phrases without a field name: the rule set and the local stand-in both word them."""
    out = []
    needed = needs_torch()
    torch_req = next((r for r in requirements if requirement_name(r) == "torch"), None)
    if torch_req is None:
        if info.torch and not satisfies(info.torch, needed):
            out.append(f"torch {info.torch} in the image and no torch in the requirements, but transformers 5 needs "
                       f"torch{needed} (below it transformers disables PyTorch and flant5_lib.train fails)")
    else:
        spec = requirement_spec(torch_req)
        if spec.startswith("==") and not satisfies(spec[2:], needed):
            out.append(f"torch requirement {torch_req!r} conflicts with transformers 5, which needs torch{needed}")
    if info.python:
        bad = python_conflicts(info.python, requirements)
        if bad:
            out.append(f"Python {info.python} in the image, but these pins need a newer one: {', '.join(bad)}")
    return out


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
        dockerfile, build_args = PROJECT_ROOT / row["dockerfile"], {k: str(v) for k, v in row.get("build_args", {}).items()}
        return ImageInfo(uri, last, "project", row["role"], row["device"], dockerfile_python(dockerfile, build_args),
                         pins().get("torch"), "bundled" if row["device"] == "gpu" else None, dockerfile,
                         build_args=tuple(sorted(build_args.items())))
    return None


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class DockerImage:
    """What one build of a Dockerfile is made of: its base image (the FROM at the root of the final stage's chain)
    and the instructions of every stage on that chain, in order (line continuations joined, comments dropped)."""

    base: str
    instructions: tuple[tuple[str, str], ...]

    def last(self, word: str) -> str | None:
        return next((rest for w, rest in reversed(self.instructions) if w == word), None)


def dockerfile_image(dockerfile: Path, build_args: dict[str, str] | None = None) -> DockerImage:
    """The image `docker build -f dockerfile --build-arg K=V ...` makes: the ARGs before the first FROM (their
    defaults, or `build_args`) are substituted into the FROM lines, and `FROM <stage>` follows an earlier stage, as
    BuildKit does. Stages the final one does not come from are left out (BuildKit does not build them)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    args: dict[str, str] = {}
    stages: dict[str, tuple[str, str | None, list[tuple[str, str]]]] = {}  # name -> (image, parent stage, body)
    body: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "ARG" and body is None:
            name, _, default = rest.partition("=")
            args[name] = (build_args or {}).get(name, default)
        elif word == "FROM":
            resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), re.sub(r"^(--\S+\s+)*", "", rest))
            image, *alias = (part.strip() for part in re.split(r"\s+AS\s+", resolved, maxsplit=1, flags=re.I))
            body = []
            stages[alias[0] if alias else f"#{len(stages)}"] = (image, image if image in stages else None, body)
        elif body is not None:
            body.append((word, rest))
    if not stages:
        return DockerImage("", ())
    image, parent, body = list(stages.values())[-1]
    chain = [body]
    while parent is not None:
        image, parent, body = stages[parent]
        chain.insert(0, body)
    return DockerImage(image, tuple(i for part in chain for i in part))


def dockerfile_python(dockerfile: Path, build_args: dict[str, str] | None = None) -> str | None:
    """'3.11.11' from a base image `python:3.11.11-slim...` (None when the file or such a base is missing)."""
    if not dockerfile.is_file():
        return None
    m = re.fullmatch(r"(?:\S+/)?python:(\d+\.\d+(?:\.\d+)?)\S*", dockerfile_image(dockerfile, build_args).base)
    return m.group(1) if m else None


def dockerfile_command_part(dockerfile: Path, kind: str, build_args: dict[str, str] | None = None) -> list[str]:
    """The last ENTRYPOINT or CMD of the built image as a list (exec form; the shell form runs under /bin/sh -c)."""
    raw = dockerfile_image(dockerfile, build_args).last(kind)
    if raw is None:
        return []
    return list(json.loads(raw)) if raw.startswith("[") else ["/bin/sh", "-c", raw]


def container_command(dockerfile: Path, command: list[str] | None = None, args: list[str] | None = None) -> list[str]:
    """What Docker runs: `command` replaces ENTRYPOINT, `args` replace CMD (Vertex's containerSpec semantics)."""
    entry = list(command) if command else dockerfile_command_part(dockerfile, "ENTRYPOINT")
    tail = list(args) if args else ([] if command else dockerfile_command_part(dockerfile, "CMD"))
    return [*entry, *tail]
