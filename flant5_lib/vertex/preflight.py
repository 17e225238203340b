"""Everything that would make a paid Vertex AI job or deployment fail, checked before any request is sent.

`flant5 vertex preflight`, every `--dry-run`, `flant5 run` and notebooks 02/04 call `problems` or `require`. Each
problem is one line naming the parameter and the fix, and all of them come at once: the expensive discovery is a
job that fails after 12 minutes of provisioning because the image's torch is too old for transformers 5, or a
deployment that pays for an A100 its CPU-only torch never sees. The local stand-in applies the same rules.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from flant5_lib.config import Params
from flant5_lib.errors import ParamsError
from flant5_lib.vertex import images
from flant5_lib.vertex.presets import PRESETS, machine_problem

log = logging.getLogger(__name__)

ACCELERATOR_TABLE = images.PROJECT_ROOT / "params" / "tables" / "accelerators.yaml"
_NO_BF16 = {"NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4"}
# fields that may hold a `<...>` template from the shipped params files
_TEMPLATED = ("gcp_project", "staging_bucket", "service_account", "tensorboard_resource", "image_registry",
              "train_container_uri", "serving_container_uri", "train_output_dir", "model_artifact_uri")
_TENSORBOARD = re.compile(r"^projects/[^/]+/locations/(?P<region>[^/]+)/tensorboards/[^/]+$")


@lru_cache(maxsize=2)
def load_accelerators(path: str | None = None) -> dict[str, Any]:
    p = Path(path) if path else ACCELERATOR_TABLE
    if not p.is_file():
        return {"regions": {}, "accelerator_types": []}
    return yaml.safe_load(p.read_text(encoding="utf-8")) or {}


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and bool(re.search(r"<[^>]*>", value))


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def _satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets a PEP 440 specifier (packaging is present wherever pip is)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    base = ".".join(map(str, _version_tuple(version))) or version
    return Version(base) in SpecifierSet(spec) if spec else True


def script_requirements(params: Params) -> list[str]:
    """pip requirements of a `script` job: train_requirements, or the project's base + [train] dependencies pinned
    to constraints.txt (torch included, so the image's older torch is replaced instead of silently kept)."""
    if params.train_requirements is not None:
        return list(params.train_requirements)
    pins = images.pins()
    out = []
    for req in images.train_requirements():
        name = images.requirement_name(req)
        out.append(f"{name}=={pins[name]}" if name in pins else req)
    return out


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
        if needs and not _satisfies(full, needs):
            out.append(f"{m.group(1)}=={m.group(2)} (Python {needs})")
    return out


def _needs_torch() -> str:
    return str(images.load_table()["needs"]["torch"])


def requirement_conflicts(info: images.ImageInfo, requirements: list[str]) -> list[str]:
    """Why a job with these pip requirements fails on this image: the torch transformers 5 needs, and pins whose
    wheels need a newer Python. Phrases without a field name: preflight and the local stand-in both word them."""
    out = []
    needs_torch = _needs_torch()
    torch_req = next((r for r in requirements if images.requirement_name(r) == "torch"), None)
    if torch_req is None:
        if info.torch and not _satisfies(info.torch, needs_torch):
            out.append(f"torch {info.torch} in the image and no torch in the requirements, but transformers 5 needs "
                       f"torch{needs_torch} (below it transformers disables PyTorch and flant5_lib.train fails)")
    else:
        spec = images.requirement_spec(torch_req)
        if spec.startswith("==") and not _satisfies(spec[2:], needs_torch):
            out.append(f"torch requirement {torch_req!r} conflicts with transformers 5, which needs torch{needs_torch}")
    if info.python:
        bad = python_conflicts(info.python, requirements)
        if bad:
            out.append(f"Python {info.python} in the image, but these pins need a newer one: {', '.join(bad)}")
    return out


# --- the checks --------------------------------------------------------------------------------------------------


def _settings(params: Params) -> list[str]:
    out = []
    for name in _TEMPLATED:
        value = getattr(params, name)
        if _is_template(value):
            out.append(f"{name}: still the template {value!r}; set it in the params file or with --set {name}=...")
    if params.vertex_mode == "cloud":
        for name, example in (("gcp_project", "my-project"), ("staging_bucket", "gs://my-bucket/flant5")):
            if getattr(params, name) in (None, ""):
                out.append(f"{name}: required for vertex_mode: cloud; set it (e.g. --set {name}={example})")
    for name in ("staging_bucket", "train_output_dir", "model_artifact_uri"):
        value = getattr(params, name)
        if value and not _is_template(value) and not value.startswith("gs://"):
            out.append(f"{name}: {value!r} must be a gs://BUCKET/PATH URI")
    return out


def _hardware(params: Params) -> list[str]:
    out = []
    if params.train_preset and params.train_preset not in PRESETS:
        out.append(f"train_preset: unknown preset {params.train_preset!r}; choose one of {', '.join(PRESETS)}")
    table = load_accelerators()
    regions: dict[str, list[str]] = table.get("regions") or {}
    for role in ("train", "deploy", "batch"):
        machine = getattr(params, f"{role}_machine_type")
        acc = getattr(params, f"{role}_accelerator_type") or None
        count = getattr(params, f"{role}_accelerator_count")
        problem = machine_problem(machine, acc, count, role)
        if problem:
            out.append(problem)
        if acc and params.gcp_region in regions and acc not in regions[params.gcp_region]:
            where = [r for r, accs in regions.items() if acc in accs]
            out.append(f"{role}_accelerator_type: {acc} is not offered in gcp_region {params.gcp_region} "
                       f"(params/tables/accelerators.yaml); use one of {', '.join(where) or 'no known region'} or another GPU")
        elif acc and regions and params.gcp_region not in regions:
            log.warning("gcp_region %s is not in params/tables/accelerators.yaml; GPU availability not checked",
                        params.gcp_region)
    if params.precision == "bf16" and params.train_accelerator_type in _NO_BF16:
        out.append(f"precision: {params.train_accelerator_type} has no bf16; use precision: auto (fp32 there) "
                   "or an A100/L4/H100")
    if params.train_spot and params.train_replica_count > 1:
        log.warning("train_spot with %d replicas: one preemption restarts every replica", params.train_replica_count)
    return out


def _tensorboard(params: Params) -> list[str]:
    tb = params.tensorboard_resource
    if not tb or _is_template(tb):
        return []
    out = []
    if not params.service_account:
        out.append("service_account: Vertex refuses a TensorBoard without a service account (it writes the logs as "
                   "that account); set service_account, or clear tensorboard_resource")
    m = _TENSORBOARD.match(tb)
    if not m:
        out.append(f"tensorboard_resource: {tb!r} must be projects/PROJECT/locations/REGION/tensorboards/ID "
                   "(`gcloud ai tensorboards list --region REGION`)")
    elif m.group("region") != params.gcp_region:
        out.append(f"tensorboard_resource: in {m.group('region')}, but the job runs in gcp_region "
                   f"{params.gcp_region}; use a TensorBoard of the same region")
    return out


def training_image_problems(params: Params) -> list[str]:
    """Image <-> job kind <-> requirements <-> Python/torch of the training job."""
    uri = images.train_image(params)
    if _is_template(params.train_container_uri):
        return []  # already reported as a template
    info = images.describe(uri)
    kind = params.train_job_kind
    field = "train_container_uri"
    if info is None:
        if kind == "script":
            return [f"{field}: {uri!r} is not in params/tables/images.yaml, so its Python and torch are unknown; add its "
                    "row after checking Google's prebuilt-image list, or use train_job_kind: container with the "
                    "project's image (`flant5 vertex build`)"]
        log.warning("%s %s is not a known image: its contents are not checked", field, uri)
        return []
    out = []
    if info.role != "train":
        out.append(f"{field}: {info.name} is a serving image; use the project's training image (leave "
                   f"{field} unset) or a prebuilt training image")
        return out
    if info.device == "cpu" and params.train_accelerator_count:
        out.append(f"{field}: {info.name} has no CUDA, but train_accelerator_count is "
                   f"{params.train_accelerator_count}; use a GPU image")
    if info.source == "prebuilt" and kind == "container":
        out.append(f"train_job_kind: container runs the image's own command, and {info.name} does not contain "
                   "flant5_lib; use train_job_kind: script with it, or the project's image (leave "
                   f"{field} unset, build it with `flant5 vertex build`)")
        return out
    reqs = script_requirements(params) if kind == "script" else []
    if info.source == "project":
        needs_torch = _needs_torch()
        if info.torch and not _satisfies(info.torch, needs_torch):
            out.append(f"constraints.txt: torch=={info.torch} in the project's image, but transformers 5 needs "
                       f"torch{needs_torch}; raise the torch pin")
    elif kind == "script":
        for conflict in requirement_conflicts(info, reqs):
            fix = ("add 'torch>=2.6' to train_requirements" if conflict.startswith("torch") else
                   "use a prebuilt image with a newer Python")
            out.append(f"{field}: {info.name}: {conflict}; use the project's image (train_job_kind: container, "
                       f"`flant5 vertex build`) or {fix}")
    if info.source == "project" and info.python:
        pins = images.pins()
        train = {images.requirement_name(r) for r in images.train_requirements()}
        bad = python_conflicts(info.python, [f"{n}=={pins[n]}" for n in sorted(train) if n in pins])
        if bad:
            out.append(f"{info.dockerfile}: FROM python:{info.python}, but constraints.txt pins need "
                       f"{', '.join(bad[:3])}; raise the base image's Python")
    return out


def serving_hardware_problem(uri: str, accelerator_type: str | None, machine_type: str, role: str = "deploy",
                             field: str = "serving_container_uri") -> str | None:
    """One line when a serving image cannot use (or needs) the machine it is put on; None when it fits or is unknown.

    Also asked at deploy time about the image an already uploaded model carries."""
    info = images.describe(uri)
    if info is None:
        log.warning("serving image %s is not a known image: GPU/CPU match not checked", uri)
        return None
    if info.role != "serve":
        return f"{field}: {info.name} is a training image; leave {field} unset for the project's serving image"
    if info.server != "flant5":
        return (f"{field}: {info.name} is a prebuilt {info.server} image: it serves its own handler, not this "
                "project's model folder and /predict contract; leave it unset for the project's image")
    if info.device == "cpu" and accelerator_type:
        return (f"{field}: {info.name} has CPU-only torch, but {role}_accelerator_type is {accelerator_type}: the GPU "
                f"would be paid for and unused; use the project's GPU image ({images.SERVE_GPU_IMAGE}, chosen when "
                f"{field} is unset) or clear {role}_accelerator_type")
    if info.device == "gpu" and not accelerator_type and role == "deploy":  # batch: CUDA torch runs on CPU, larger
        return (f"{field}: {info.name} is a CUDA image, but {role}_machine_type {machine_type} has no GPU; set "
                f"{role}_accelerator_type/count or use the CPU image ({images.SERVE_IMAGE})")
    return None


def serving_image_problems(params: Params) -> list[str]:
    """The serving image matches the hardware of the deployment and of batch prediction, and runs our server."""
    if _is_template(params.serving_container_uri):
        return []
    out = []
    for role in ("deploy", "batch"):
        acc = getattr(params, f"{role}_accelerator_type") or None
        uri = images.serving_image(params, acc or "") if role == "deploy" else images.serving_image(params)
        problem = serving_hardware_problem(uri, acc, getattr(params, f"{role}_machine_type"), role)
        if problem and problem not in out:
            out.append(problem)
    return out


def problems(params: Params) -> list[str]:
    """Every reason a cloud call with these params would fail or waste money, one line each (empty: all clear)."""
    if params.train_preset and params.train_preset in PRESETS:
        from flant5_lib.vertex.specs import resolve

        params = resolve(params)
    found = [*_settings(params), *_hardware(params), *_tensorboard(params), *training_image_problems(params),
             *serving_image_problems(params)]
    return list(dict.fromkeys(found))


def require(params: Params) -> None:
    """Raise one ParamsError (exit 2) listing every problem, one per line; return quietly when all is clear."""
    found = problems(params)
    if found:
        raise ParamsError(f"preflight found {len(found)} problem(s):\n" + "\n".join(f"  {p}" for p in found))


# the names `flant5_lib.vertex` re-exports (notebooks and `flant5 run` call these)
preflight_problems = problems
require_preflight = require


def is_unset_problem(line: str) -> bool:
    """Whether a problem only says a setting is still unset or a template (a dry run may show those)."""
    return "still the template" in line or ": required for vertex_mode: cloud" in line
