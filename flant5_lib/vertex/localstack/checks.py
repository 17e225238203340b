"""What the stand-in refuses, with the status Vertex gives: the same rules as `flant5 vertex preflight` (`presets`
for hardware, `images` for what an image can run), worded as Vertex words them.

Request-time refusals (400 INVALID_ARGUMENT before anything runs): impossible machine/accelerator pairs and counts,
a GPU the region does not offer, a TensorBoard without a service account or one that does not exist. Run-time
failures (the job or the deployment fails, as on Vertex): a prebuilt image whose Python or torch cannot run the
job's requirements, and images the stand-in cannot emulate (it runs only images this project builds).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from flant5_lib.vertex import images, presets
from flant5_lib.vertex.localstack.errors import ApiError


def _get(d: dict[str, Any], snake: str) -> Any:
    """A field under its snake_case name (Struct bodies, as the SDK writes trainingTaskInputs) or camelCase."""
    camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), snake)
    return d.get(snake, d.get(camel))


def _accelerator_name(value: Any) -> str | None:
    """The enum name: the SDK's REST transport sends enums as numbers (`$alt=json;enum-encoding=int`)."""
    if value in (None, "", 0, "0", "ACCELERATOR_TYPE_UNSPECIFIED"):
        return None
    if isinstance(value, int) or str(value).isdigit():
        from google.cloud.aiplatform_v1.types import AcceleratorType

        try:
            return AcceleratorType(int(value)).name
        except ValueError:
            raise ApiError(400, f"Invalid value at 'machine_spec.accelerator_type': {value}.") from None
    return str(value)


def machine_spec(spec: dict[str, Any] | None, where: str, region: str) -> None:
    """400 INVALID_ARGUMENT for a pair or count Vertex refuses, or a GPU the region does not have."""
    spec = spec or {}
    machine = _get(spec, "machine_type")
    if not machine:
        raise ApiError(400, f"{where}.machineSpec.machineType is required.")
    acc = _accelerator_name(_get(spec, "accelerator_type"))
    count = int(float(_get(spec, "accelerator_count") or 0))
    problem = presets.machine_problem(str(machine), acc, count, "spec")
    if problem:
        raise ApiError(400, f"{where}.machineSpec: accelerator {acc or 'none'} x {count} is not supported for machine "
                            f"type {machine} ({problem.split(': ', 1)[1].split('; set ')[0]}).")
    if acc and presets.offered_in(acc, region) is False:
        raise ApiError(400, f"{where}.machineSpec: accelerator type {acc} is not supported in location {region}.")


def worker_pools(pools: list[dict[str, Any]], where: str, region: str) -> None:
    """Vertex's pool rules: pool 0 is one chief; a later pool may be an empty placeholder (`{}`, as the SDK sends
    pool 1 when only pool 2 or 3 is used), else it needs a machine; pool 2, the reduction server, needs its image."""
    if not pools:
        raise ApiError(400, f"{where}.workerPoolSpecs must contain at least one pool.")
    for i, pool in enumerate(pools):
        count = int(float(_get(pool, "replica_count") or 0))
        if i == 0 and count != 1:
            raise ApiError(400, f"{where}.workerPoolSpecs[0].replicaCount must be 1.")
        if i > 0 and not any(v for v in pool.values()):
            continue  # an empty placeholder pool
        machine_spec(_get(pool, "machine_spec"), f"{where}.workerPoolSpecs[{i}]", region)
        if i == 2 and count and not (_get(pool, "container_spec") or {}).get("imageUri", (
                _get(pool, "container_spec") or {}).get("image_uri")):
            raise ApiError(400, f"{where}.workerPoolSpecs[2].containerSpec.imageUri is required: the reduction "
                                "server pool runs Google's reduction-server image (us-docker.pkg.dev/vertex-ai-"
                                "restricted/training/reductionserver:latest).")


def scheduling(spec: dict[str, Any], where: str, region: str) -> None:
    """400 for a scheduling strategy Vertex refuses on the job's machine, GPU or region (rules.scheduling_problem)."""
    from flant5_lib.vertex.localstack.preempt import strategy_name
    from flant5_lib.vertex.rules import scheduling_problem

    strategy = strategy_name(spec)
    for i, pool in enumerate(_get(spec, "worker_pool_specs") or []):
        m = _get(pool, "machine_spec") or {}
        acc = _accelerator_name(_get(m, "accelerator_type")) if int(float(_get(m, "accelerator_count") or 0)) else None
        problem = scheduling_problem(strategy, str(_get(m, "machine_type") or ""), acc, region)
        if problem:
            raise ApiError(400, f"{where}.scheduling.strategy: {strategy} is not supported for "
                                f"workerPoolSpecs[{i}] ({problem.split(': ', 1)[1]}).")


def tensorboard(known: set[str], name: str | None, service_account: str | None, where: str) -> None:
    """Vertex writes TensorBoard logs as the job's service account, so it refuses one without."""
    if not name:
        return
    if not service_account:
        raise ApiError(400, f"{where}.service_account must be specified when uploading to TensorBoard.")
    if name not in known:
        raise ApiError(404, f"Tensorboard {name} is not found.")


def _setup_requirements(package_root: Path) -> list[str]:
    """install_requires of the SDK's generated setup.py (where `requirements=` of a script job end up)."""
    reqs: list[str] = []
    for setup in package_root.rglob("setup.py"):
        m = re.search(r"install_requires\s*=\s*\((.*?)\)", setup.read_text(encoding="utf-8"), re.DOTALL)
        if m:
            reqs += re.findall(r'"([^"]+)"', m.group(1))
    return reqs


def script_image(uri: str, package_root: Path) -> None:
    """A python-package job: the image must be one the stand-in can stand for, and its Python/torch must run the
    package's requirements (on Vertex pip or transformers would fail in the replica)."""
    info = images.describe(uri)
    if info is None:
        raise ApiError(400, f"The local stand-in cannot emulate executor image {uri}: it is neither built by this "
                            "project nor in params/tables/images.yaml, so its Python and torch are unknown.",
                       "FAILED_PRECONDITION")
    if info.role != "train":
        raise ApiError(400, f"executorImageUri {uri} is a serving image, not a training image.")
    if info.source == "prebuilt":
        conflicts = images.requirement_conflicts(info, _setup_requirements(package_root))
        if conflicts:
            raise ApiError(500, "The replica workerpool0-0 exited with a non-zero status of 1. On the image "
                                f"{info.name}: " + "; ".join(conflicts) + ". (Checked by the local stand-in against "
                                "params/tables/images.yaml; Vertex fails the same job in pip or at `import transformers`.)",
                           "INTERNAL")


# how CustomJob.from_local_script runs a script on a custom image (google-cloud-aiplatform jobs.py)
_SDK_SCRIPT = re.compile(r"pip3 install -q --user (?P<package>\S+) && python3 -m (?P<module>[\w.]+)(?P<args>.*)$")


def container_command(spec: dict[str, Any]) -> tuple[list[str], str | None]:
    """(command, package) for a custom training container: its `command`, or the image's ENTRYPOINT (+ CMD unless
    args are given) read from the project's Dockerfile; `package` is the gs:// source archive of the SDK's
    `from_local_script` command, which the stand-in unpacks instead of pip-installing it on this machine.

    Only the project's images are emulated, and only Python commands run: a shell command would run on the host,
    not in a container, so it is refused (the SDK's from_local_script form is recognised and translated)."""
    uri = spec.get("imageUri") or spec.get("image_uri") or ""
    info = images.describe(uri)
    if info is None or info.source != "project":
        what = (f"{info.name} is a prebuilt image without flant5_lib" if info is not None
                else "it is not built by this project")
        raise ApiError(400, f"The local stand-in cannot emulate container image {uri}: {what}. It runs only images "
                            "built from this repository's Dockerfiles (flant5-train).", "FAILED_PRECONDITION")
    if info.role != "train":
        raise ApiError(400, f"containerSpec.imageUri {uri} is a serving image, not a training image.")
    assert info.dockerfile is not None
    cmd = images.container_command(info.dockerfile, spec.get("command"), spec.get("args"))
    if not cmd:
        raise ApiError(400, f"{info.dockerfile} has no ENTRYPOINT or CMD; set containerSpec.command.")
    if cmd[:2] == ["sh", "-c"] and len(cmd) >= 3:
        m = _SDK_SCRIPT.search(cmd[2])
        if m:
            package = m.group("package")
            if package.startswith("/gcs/"):
                package = "gs://" + package[len("/gcs/"):]
            return ["python", "-m", m.group("module"), *shlex.split(m.group("args")), *cmd[3:]], package
    if not Path(cmd[0]).name.startswith("python"):
        raise ApiError(400, f"The local stand-in runs only Python commands of {info.name} (it has no container to "
                            f"run {cmd[0]!r} in); use the image's ENTRYPOINT or `python -m ...`.", "FAILED_PRECONDITION")
    return cmd, None


def serving_image(uri: str) -> images.ImageInfo:
    """Deploying: only the project's serving images can be emulated; anything else fails clearly."""
    info = images.describe(uri)
    if info is None or info.source != "project" or info.role != "serve":
        if info is not None and info.server != "flant5":
            why = (f"{info.name} is a prebuilt {info.server} image; it would look for its own model archive, not "
                   "this project's model folder")
        elif info is not None:
            why = f"{info.name} is a {info.role} image, not this project's serving image"
        else:
            why = "it is not built by this project"
        raise ApiError(400, f"The local stand-in cannot emulate serving image {uri}: {why}. It serves only "
                            f"{images.SERVE_IMAGE} / {images.SERVE_GPU_IMAGE} images built from this repository.",
                       "FAILED_PRECONDITION")
    return info
