"""The Vertex rule set: everything that would make a paid Vertex AI job or deployment fail, checked before any request.

Every problem is one line naming the parameter and the fix. One set of rules, asked two ways:
- `problems` / `require`: all of them at once (`flant5 vertex preflight`, every real launch and `--dry-run`,
  `flant5 run`, notebooks 02/04). The expensive discovery is a job that fails after 12 minutes of provisioning
  because the image's torch is too old for transformers 5, or a deployment that pays for an A100 its CPU-only torch
  never sees.
- `check_request`: what one call sends (the settings it needs, its gs:// URIs, its machines), the first problem as
  one line, before the call or its dry run.
The hardware rules live in `presets`, what an image can run in `images`; the local stand-in asks the same functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from flant5_lib import storage
from flant5_lib.config import Params
from flant5_lib.errors import CloudError, ParamsError
from flant5_lib.vertex import images, presets
from flant5_lib.vertex.tables import PROJECT_ROOT, load_table

log = logging.getLogger(__name__)

API_SETTINGS = ("gcp_project", "gcp_region")  # every Vertex API call names its project and region
REQUIRED = (*API_SETTINGS, "staging_bucket")  # what a job or an upload stages goes to the bucket
ROLES = ("train", "deploy", "batch")  # the three hardware shapes a run pays for
_EXAMPLES = {"gcp_project": "my-project", "gcp_region": "us-central1", "staging_bucket": "gs://my-bucket/flant5"}
_GCS_FIELDS = ("staging_bucket", "train_output_dir", "model_artifact_uri")
# fields that may hold a `<...>` template from the shipped params files
_TEMPLATED = ("gcp_project", "staging_bucket", "service_account", "tensorboard_resource", "image_registry",
              "train_container_uri", "serving_container_uri", "train_output_dir", "model_artifact_uri")
_NO_BF16 = {"NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4"}
_TENSORBOARD = re.compile(r"^projects/[^/]+/locations/(?P<region>[^/]+)/tensorboards/[^/]+$")


def _is_template(value: object) -> bool:
    return isinstance(value, str) and bool(re.search(r"<[^>]*>", value))


# --- settings -----------------------------------------------------------------------------------------------------


def settings_to_fill(params: Params, need: Sequence[str] = REQUIRED, *, calling: bool = False) -> list[str]:
    """Settings still to fill in, one line each: a `<...>` template, or a needed setting left unset. A dry run may
    show these as `<name>`; a real call may not.

    `calling`: a call is about to be made, so the settings it `need`s count in both modes (local mode reads them
    from the stand-in's state file). Otherwise they count in cloud mode only: a local run starts the stand-in that
    supplies them."""
    out = []
    for name in need if calling else _TEMPLATED:
        value = getattr(params, name)
        if _is_template(value):
            out.append(f"{name}: still the template {value!r}; set it in the params file or with --set {name}=...")
    if calling or params.vertex_mode == "cloud":
        for name in need:
            if getattr(params, name) in (None, ""):
                fix = ("start `flant5 vertex local-stack` and pass --local-stack STATE.json"
                       if params.vertex_mode == "local" else f"set it (e.g. --set {name}={_EXAMPLES.get(name, '...')})")
                out.append(f"{name}: required for Vertex AI calls (vertex_mode: {params.vertex_mode}); {fix}")
    if calling and params.vertex_mode == "local" and not params.vertex_api_endpoint:
        out.append("vertex_api_endpoint: vertex_mode is 'local' but no stand-in endpoint is set; "
                   "start `flant5 vertex local-stack` (or set vertex_mode: cloud)")
    return out


def _uri_problems(params: Params) -> list[str]:
    out = []
    for name in _GCS_FIELDS:
        value = getattr(params, name)
        if value and not _is_template(value) and not storage.is_gcs(value):
            out.append(f"{name}: {value!r} must be a gs://BUCKET/PATH URI")
    return out


# --- hardware -----------------------------------------------------------------------------------------------------


def _machine_problem(params: Params, role: str) -> str | None:
    return presets.machine_problem(getattr(params, f"{role}_machine_type"),
                                   getattr(params, f"{role}_accelerator_type") or None,
                                   getattr(params, f"{role}_accelerator_count"), role)


def _hardware(params: Params) -> list[str]:
    out = []
    for role in ROLES:
        problem = _machine_problem(params, role)
        if problem:
            out.append(problem)
        acc = getattr(params, f"{role}_accelerator_type") or None
        offered = presets.offered_in(acc, params.gcp_region) if acc else True
        if offered is False:
            where = presets.regions_offering(acc)  # type: ignore[arg-type]
            out.append(f"{role}_accelerator_type: {acc} is not offered in gcp_region {params.gcp_region} "
                       f"(params/tables/accelerators.yaml); use one of {', '.join(where) or 'no known region'} or another GPU")
        elif offered is None:
            log.warning("gcp_region %s is not in params/tables/accelerators.yaml; GPU availability not checked",
                        params.gcp_region)
    if params.precision == "bf16" and params.train_accelerator_type in _NO_BF16:
        out.append(f"precision: {params.train_accelerator_type} has no bf16; use precision: auto (fp32 there) "
                   "or an A100/L4/H100")
    if params.scheduling_strategy == "spot" and params.train_replica_count > 1:
        log.warning("scheduling_strategy spot with %d replicas: one preemption restarts every replica", params.train_replica_count)
    problem = scheduling_problem(params.scheduling_strategy, params.train_machine_type,
                                 params.train_accelerator_type if params.train_accelerator_count else None, params.gcp_region)
    if problem:
        out.append(problem)
    return out


SCHEDULING_TABLE = PROJECT_ROOT / "params" / "tables" / "scheduling.yaml"


def scheduling_problem(strategy: str, machine: str, accelerator: str | None, region: str) -> str | None:
    """One line when Vertex refuses `strategy` (standard|spot|flex_start, any case; the SDK's enum name) on this
    machine, GPU or region (params/tables/scheduling.yaml + the GPU's regions); asked by preflight and the stand-in."""
    name = strategy.lower()
    if name in ("", "strategy_unspecified", "standard", "on_demand"):
        return None
    rules = load_table(SCHEDULING_TABLE, ("strategies",), "params/tables/scheduling.yaml")["strategies"].get(name)
    if rules is None:
        return f"scheduling_strategy: {strategy!r} is not a strategy this project knows; use standard, spot or flex_start"
    if any(machine.startswith(p) for p in rules.get("refused_machine_prefixes", [])):
        return f"scheduling_strategy: {name} is not offered on train_machine_type {machine} (TPU Pods); use standard"
    if rules.get("needs_accelerator") and not accelerator:
        return (f"scheduling_strategy: {name} needs a GPU job (one of {', '.join(rules.get('accelerators', []))}), "
                f"but train_machine_type {machine} has none; use standard or spot")
    allowed = rules.get("accelerators")
    if accelerator and allowed and accelerator not in allowed:
        return (f"scheduling_strategy: {name} does not take train_accelerator_type {accelerator}; use one of "
                f"{', '.join(allowed)}, or scheduling_strategy standard/spot")
    if accelerator and presets.offered_in(accelerator, region) is False:
        return (f"scheduling_strategy: {name} capacity for {accelerator} is not offered in gcp_region {region}; use "
                f"one of {', '.join(presets.regions_offering(accelerator)) or 'no known region'}")
    return None


# --- TensorBoard and images ---------------------------------------------------------------------------------------


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
    reqs = images.script_requirements(params) if kind == "script" else []
    if info.source == "project":
        needed = images.needs_torch()
        if info.torch and not images.satisfies(info.torch, needed):
            out.append(f"constraints.txt: torch=={info.torch} in the project's image, but transformers 5 needs "
                       f"torch{needed}; raise the torch pin")
    elif kind == "script":
        for conflict in images.requirement_conflicts(info, reqs):
            fix = ("add 'torch>=2.6' to train_requirements" if conflict.startswith("torch") else
                   "use a prebuilt image with a newer Python")
            out.append(f"{field}: {info.name}: {conflict}; use the project's image (train_job_kind: container, "
                       f"`flant5 vertex build`) or {fix}")
    if info.source == "project" and info.python:
        pins = images.pins()
        train = {images.requirement_name(r) for r in images.train_requirements()}
        bad = images.python_conflicts(info.python, [f"{n}=={pins[n]}" for n in sorted(train) if n in pins])
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


def distributed_problems(params: Params) -> list[str]:
    """The torchrun world the job's arguments ask for against the machines its request pays for (resolved preset):
    --nnodes must equal the replicas (else torchrun waits for nodes that never come, or each replica trains alone
    and writes the same AIP_MODEL_DIR), --nproc-per-node the GPUs of one replica (else GPUs idle or ranks collide)."""
    from flant5_lib.vertex import specs

    args = specs.task_args(params, project_package=None)
    nnodes, nproc = int(args[args.index("--nnodes") + 1]), int(args[args.index("--nproc-per-node") + 1])
    gpus = params.train_accelerator_count if params.train_accelerator_type else 0
    out = []
    if nnodes != params.train_replica_count:
        out.append(f"train_replica_count: the job runs {params.train_replica_count} replica(s) but its arguments ask "
                   f"torchrun for --nnodes {nnodes}; set train_replica_count={nnodes} or use a preset")
    if gpus > 1 and nproc != gpus:
        out.append(f"train_accelerator_count: each replica has {gpus} GPU(s) but its arguments ask torchrun for "
                   f"--nproc-per-node {nproc}; set train_accelerator_count={nproc} or use a preset")
    if params.distributed == "fsdp" and max(1, gpus) * params.train_replica_count < 2:
        out.append(f"distributed: fsdp needs 2 or more processes, but train_preset/train_accelerator_count x "
                   f"train_replica_count gives {max(1, gpus) * params.train_replica_count}; use a multi-GPU preset "
                   "(a100-80gb-x8) or distributed: auto")
    if params.model_name == "tiny" and params.train_replica_count > 1:  # a warning: the stand-in's own tests use it
        log.warning("model_name: 'tiny' is built on each node but saved by global rank 0 only (transformers 5), so "
                    "workerpool1 replicas find no model; build it once (`flant5 model init-tiny`), upload the folder "
                    "and set model_name to its gs:// URI")
    return out


# --- the two ways to ask -----------------------------------------------------------------------------------------


def problems(params: Params, *, settings: bool = True) -> list[str]:
    """Every reason a cloud call with these params would fail or waste money, one line each (empty: all clear).

    `settings=False` leaves out the settings still to fill in (`settings_to_fill`), which a dry run may show."""
    preset = presets.preset_problem(params)
    if preset is None:
        params = presets.resolve(params)
    found = [*(settings_to_fill(params) if settings else []), *_uri_problems(params), *([preset] if preset else []),
             *_hardware(params), *distributed_problems(params), *_tensorboard(params), *training_image_problems(params),
             *serving_image_problems(params)]
    return list(dict.fromkeys(found))


def require(params: Params) -> None:
    """Raise one ParamsError (exit 2) listing every problem, one per line; return quietly when all is clear."""
    found = problems(params)
    if found:
        raise ParamsError(f"preflight found {len(found)} problem(s):\n" + "\n".join(f"  {p}" for p in found))


def check_request(params: Params, *, roles: Sequence[str] = (), need: Sequence[str] = REQUIRED,
                  dry_run: bool = False) -> None:
    """Raise one CloudError (one line) before a call or its dry run: an impossible machine among `roles` (the
    hardware the call sends), a URI that is not gs://, and unless `dry_run` a setting in `need` still to fill in."""
    if "train" in roles:
        params = presets.resolve(params)
    found = [*filter(None, (_machine_problem(params, role) for role in roles)), *_uri_problems(params),
             *([] if dry_run else settings_to_fill(params, need, calling=True))]
    if found:
        raise CloudError(found[0])


# --- hyperparameter tuning (`flant5 vertex tune`, `flant5 vertex preflight --space`) -------------------------------
# what the job's shape fixes for every trial: a trial runs on the job's machines and image, so varying these changes
# nothing but the bill (or breaks where the trial writes)
_FIXED_BY_JOB = ("run_dir", "resume", "distributed", "cleanup", "service_account", "model_artifact_uri")
_FIXED_PREFIXES = ("vertex_", "gcp_", "train_", "deploy_", "batch_", "serve_", "serving_", "image_", "staging_",
                   "tensorboard_", "scheduling_", "artifacts_", "predict_", "model_display", "endpoint_")


def tuning_problems(params: Params, space: Any) -> list[str]:
    """Why a tuning job over `space` (a validated `search_space.SearchSpace`) would waste its trials, one line each:
    a hyperparameter the job fixes, a value the base params refuse, a metric the trainer will not report."""
    out = []
    if params.train_job_kind != "container":
        out.append("train_job_kind: `flant5 vertex tune` runs the project's training image; use train_job_kind: "
                   "container (`flant5 vertex build`)")
    if params.eval_strategy == "no":
        out.append("eval_strategy: 'no', so no trial reports a validation score and every one ends INFEASIBLE; use "
                   "eval_strategy: epoch (or steps with eval_steps)")
    elif space.metric != "eval_loss" and params.eval_rouge_samples == 0:
        out.append(f"metric: {space.metric} is reported only with eval_rouge_samples > 0 (the trainer then reports "
                   "eval_loss alone); set eval_rouge_samples or use metric: eval_loss")
    tunable = {}
    for name, spec in space.parameters.items():
        if name in _FIXED_BY_JOB or name.startswith(_FIXED_PREFIXES):
            out.append(f"parameters.{name}: fixed by the job (every trial runs on the job's machines, image and "
                       "output folders); tune a training field instead (`flant5 params list`)")
        elif name == "metric_for_best_model":
            out.append("parameters.metric_for_best_model: the space's metric picks every trial's checkpoint; remove it "
                       "(or change metric)")
        elif name == "eval_strategy" and "no" in spec.candidates():
            out.append("parameters.eval_strategy = 'no': such a trial reports no validation score and ends "
                       "INFEASIBLE; offer epoch or steps only")
        else:
            tunable[name] = spec
    checked = space.model_copy(update={"parameters": tunable})
    out += [f"parameters.{name} = {value!r}: {reason}" for name, value, reason in checked.refused_candidates(params.model_dump())]
    return out
