"""The one typed parameter model read by the CLI, the notebooks, the Vertex jobs and the server.

Fields are flat (grouped by prefix) so that `papermill NB OUT -f params/x.yaml` and a notebook's
`parameters` cell can use the very same names. YAML files hold only overrides of these defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from flant5_lib.errors import ParamsError

# The dataset's split names, defined once (loaders, evaluation, the CLI's --split choices).
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = get_args(SplitName)

PLACEHOLDER = "<unset>"


class Params(BaseModel):
    """Everything a run can change. Defaults are the classic recipe; `params/*.yaml` override them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # --- run ----------------------------------------------------------------------------------
    run_dir: str = Field("runs/latest", description="Folder for everything one run writes (model, metrics, plots, index page).")
    seed: int = Field(42, description="Seed for data generation, shuffling and weight initialisation.")

    # --- data ---------------------------------------------------------------------------------
    dataset: str = Field(
        "synthetic",
        description="Dataset spec: 'synthetic[:N]', a hub id (knkarthick/samsum, Samsung/samsum), a folder "
        "(original JSON or mirror CSV layout, JSONL/parquet), a corpus.7z archive, or a gs:// folder.",
    )
    missing_split: Literal["error", "carve", "skip"] = Field(
        "error",
        description="What to do when the dataset lacks a split: 'error' stops, 'carve' takes a missing "
        "validation (or train) split from another one, 'skip' leaves it out.",
    )
    carve_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction taken when missing_split='carve'.")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training dialogues (None: all).")
    max_eval_samples: int | None = Field(None, ge=1, description="Use only the first N validation/test dialogues (None: all).")
    text_column: str = Field("dialogue", description="Column holding the dialogue in dataset files (DialogSum: 'dialogue'; "
        "in-house data: whatever it is called). Applies to every loader and to `flant5 summarize` inputs.")
    summary_column: str = Field("summary", description="Column holding the reference summary (DialogSum's test split: 'summary1').")
    id_column: str = Field("id", description="Column holding the row id (DialogSum's JSONL: 'fname'); rows without one are numbered.")

    # --- preprocessing (shared by training, evaluation and serving) ---------------------------
    source_prefix: str = Field("summarize: ", description="Instruction put before every dialogue.")
    turn_separator: str = Field(
        " | ",
        description="Joins the dialogue's turns. T5's SentencePiece vocabulary turns '\\n' into a plain space, "
        "so with '\\n' turn boundaries vanish; ' | ' keeps a visible marker the model can attend to.",
    )
    max_source_length: int = Field(512, ge=8, description="Dialogue tokens kept (longer inputs are truncated).")
    max_target_length: int = Field(128, ge=4, description="Summary tokens kept as training labels.")

    # --- model ----------------------------------------------------------------------------------
    model_name: str = Field(
        "google/flan-t5-base",
        description="Hub id (google/flan-t5-base|large|xl), a local model folder, a gs:// folder, or 'tiny' "
        "(a tiny random Flan-T5 built offline into <run_dir>/base-model).",
    )
    tokenizer_name: str | None = Field(None, description="Tokenizer to use instead of the model's own (hub id or folder).")

    # --- training -------------------------------------------------------------------------------
    num_train_epochs: float = Field(5.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: use num_train_epochs).")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    lr_scheduler_type: str = Field("linear", description="transformers scheduler name (linear, cosine, constant...).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Training dialogues per device per step.")
    per_device_eval_batch_size: int = Field(16, ge=1, description="Dialogues per generation batch in evaluation.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps accumulated before each optimiser update.")
    optim: Literal["auto", "adamw_torch", "adamw_torch_fused", "adafactor"] = Field(
        "auto", description="Optimiser: 'auto' picks fused AdamW on CUDA, plain AdamW on CPU."
    )
    precision: Literal["auto", "bf16", "fp32", "fp16"] = Field(
        "auto", description="'auto' = bf16 on GPUs that support it, fp32 otherwise. fp16 is refused: T5 overflows in it."
    )
    tf32: bool = Field(True, description="Allow TF32 matmuls on Ampere or newer GPUs.")
    torch_compile: bool = Field(False, description="Compile the model with torch.compile.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large/xl models).")
    group_by_length: bool = Field(True, description="Batch dialogues of similar length together (less padding).")
    pad_to_max_length: bool = Field(False, description="Classic recipe: pad every example to max_source_length (slow; for benchmarks).")
    logging_steps: int = Field(10, ge=1, description="Log loss every N steps (TensorBoard and trainer_state).")
    save_steps: int = Field(200, ge=1, description="Write a checkpoint every N steps.")
    save_every_minutes: float | None = Field(
        10.0, gt=0, description="Also write a checkpoint when this many minutes passed since the last one, so a Spot "
        "preemption loses at most that much work (None: save_steps only)."
    )
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept (oldest deleted first; the best one is kept too).")
    eval_strategy: Literal["no", "steps", "epoch"] = Field("epoch", description="When to evaluate on the validation split (loss and ROUGE).")
    eval_steps: int | None = Field(None, ge=1, description="With eval_strategy='steps': evaluate every N steps.")
    eval_rouge_samples: int = Field(
        200, ge=0, description="Validation dialogues generated and ROUGE-scored at each evaluation (0: loss only)."
    )
    metric_for_best_model: Literal["rougeLsum", "rougeL", "rouge1", "rouge2", "eval_loss"] = Field(
        "rougeLsum", description="Validation metric that picks the best checkpoint and drives early stopping."
    )
    keep_best_model: bool = Field(True, description="Publish the checkpoint with the best validation metric, not the last one.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without a better metric_for_best_model (None: never)."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the training loss (0: plain cross-entropy).")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    resume: Literal["auto", "never"] = Field("auto", description="'auto' resumes from the newest complete checkpoint.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field("auto", description="Data-parallel engine under torchrun (fsdp for large/xl).")
    dataloader_num_workers: int = Field(0, ge=0, description="Worker processes feeding each device.")
    lora: bool = Field(False, description="Train LoRA adapters (PEFT) instead of all weights.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    lora_target_modules: list[str] = Field(["q", "v"], description="Module names that get adapters (T5: q, k, v, o, wi_0, wi_1, wo).")
    lora_export: Literal["merged", "adapter"] = Field("merged", description="Save merged full weights or the adapter alone.")

    # --- generation / evaluation ---------------------------------------------------------------
    eval_split: SplitName = Field("test", description="Split scored by `flant5 evaluate`.")
    num_beams: int = Field(1, ge=1, le=16, description="Beam width for generation (1 = greedy).")
    max_new_tokens: int = Field(96, ge=1, description="Most tokens generated per summary.")
    length_penalty: float = Field(1.0, ge=-10, le=10, description="Beam search only: exponent on the length that divides a beam's score "
        "(>1 favours longer summaries, <1 shorter). Saved in the model's generation_config.json.")
    no_repeat_ngram_size: int = Field(0, ge=0, le=32, description="Never generate the same n-gram twice (3 stops 'Paris Paris Paris' "
        "loops; 0 = off). Saved in the model's generation_config.json.")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="Divides the score of tokens already generated or in the input "
        "(1.0 = off; 1.2 is a common value). Saved in the model's generation_config.json.")
    bootstrap_samples: int = Field(1000, ge=10, description="Resamples for the 95% ROUGE confidence intervals.")
    baselines: list[Literal["lead3", "longest3"]] = Field(["lead3", "longest3"], description="Extractive baselines to compare with.")
    compare_untuned: bool = Field(True, description="Also score the model before fine-tuning.")

    # --- serving --------------------------------------------------------------------------------
    serve_backend: Literal["hf", "ctranslate2", "onnxruntime", "auto"] = Field("auto", description="'hf' = transformers generate; "
        "'ctranslate2' = int8 CTranslate2 on CPU; 'onnxruntime' = the project's int8 ONNX Runtime export on CPU (greedy, one "
        "dialogue at a time); 'auto' = chosen from the detected hardware (CTranslate2 on a CPU, plus ONNX Runtime for a lone greedy dialogue "
        "with serve_onnx_single; transformers on a GPU), logged at start-up.")
    serve_ct2_compute_type: Literal["int8", "int8_float32", "float32"] = Field(
        "int8", description="CTranslate2 weights/compute type (converted once into the serving cache, FLANT5_CACHE_DIR); "
        "the ONNX Runtime export follows it (float32 for float32, else int8)."
    )
    serve_onnx_single: bool = Field(True, description="auto on an x86 CPU: send a lone greedy dialogue to the project's "
        "int8 ONNX Runtime export (exported once at load into the serving cache; models up to 536M parameters) and keep "
        "CTranslate2 for batches and beam search (a lone summary about 1.6x faster than on CTranslate2, docs/benchmarks.md). Its "
        "agreement with PyTorch fp32 on a trained model matches CTranslate2 int8's. A dialogue sent alone and the same "
        "dialogue sent in a batch run on different int8 engines, so they can differ where rounding breaks a near-tie; "
        "false: CTranslate2 for everything.")
    serve_ct2_split_batches: bool = Field(True, description="CPU: cut each micro-batch into length-sorted sub-batches of 4, decoded "
        "in parallel by one single-threaded CTranslate2 replica per thread (less padding; about 200 MB more memory per thread "
        "for flan-t5-base int8). False: one replica, whole batches.")
    serve_threads: int = Field(0, ge=0, description="CPU threads per generate call (torch and CTranslate2); 0 = one per core. "
        "Use 1 on a shared, oversubscribed machine: busy OpenMP threads thrash there.")
    serve_max_instances: int = Field(64, ge=1, description="Most instances accepted in one request.")
    serve_max_batch_size: int = Field(16, ge=1, description="Most dialogues generated together in one micro-batch.")
    serve_max_wait_ms: float = Field(10.0, ge=0, description="Longest a request waits for others to fill a micro-batch.")
    serve_deadline_s: float = Field(55.0, gt=0, description="Prediction deadline (Vertex cuts requests at 60 s).")
    serve_max_new_tokens_limit: int = Field(256, ge=1, description="Upper bound on the per-request max_new_tokens parameter.")
    serve_max_beams_limit: int = Field(8, ge=1, description="Upper bound on the per-request num_beams parameter.")
    serve_max_queue_dialogues: int = Field(0, ge=0, description="Most dialogues queued or being generated; a request "
        "that would go over is answered 429 with Retry-After at once. 0 = 4 x serve_max_batch_size.")
    serve_max_queue_cost: int = Field(0, ge=0, description="Most queued + in-flight work in decoder steps (dialogues x "
        "num_beams x max_new_tokens); over it: 429. 0 = auto: what this server generates in half of serve_deadline_s, "
        "measured at warm-up and re-measured on every batch.")
    serve_load_retries: int = Field(3, ge=0, description="Retries (backoff 1, 2, 4... s) of a failed model download at "
        "start-up; then the process exits non-zero so Vertex fails the deployment and Kubernetes restarts the pod.")
    serve_body_timeout_s: float = Field(10.0, gt=0, description="Longest a client may take to send its request body (408).")
    serve_shutdown_timeout_s: int = Field(25, ge=1, description="Graceful drain on SIGTERM; keep it below Vertex's 30 s "
        "grace period. The container reads FLANT5_SERVE_SHUTDOWN_TIMEOUT_S.")
    serve_docs: bool = Field(False, description="Serve the Swagger UI at /docs (/openapi.json is always served).")

    # --- Google Cloud / Vertex AI ---------------------------------------------------------------
    vertex_mode: Literal["local", "cloud"] = Field(
        "local", description="'local' = offline stand-ins (GCS emulator + Vertex API stand-in); 'cloud' = real Vertex AI."
    )
    gcp_project: str | None = Field(None, description="Google Cloud project id (cloud mode).")
    gcp_region: str = Field("us-central1", description="Vertex AI region.")
    staging_bucket: str | None = Field(None, description="gs://bucket[/prefix] for packages, models and outputs (cloud mode).")
    service_account: str | None = Field(None, description="Service account the training job and endpoint run as.")
    tensorboard_resource: str | None = Field(None, description="Vertex AI TensorBoard instance resource name.")
    vertex_api_endpoint: str | None = Field(None, description="Override the Vertex AI API endpoint (set by local-stack).")
    train_machine_type: str = Field("a2-highgpu-1g", description="Training VM (a2-highgpu-1g = 1 x A100 40 GB).")
    train_accelerator_type: str = Field("NVIDIA_TESLA_A100", description="Training GPU type.")
    train_accelerator_count: int = Field(1, ge=0, description="GPUs per training replica.")
    train_replica_count: int = Field(1, ge=1, description="Training replicas (>1 = multi-node torchrun).")
    scheduling_strategy: Literal["standard", "spot", "flex_start"] = Field(
        "standard", description="How Vertex AI provisions the training VMs: 'standard' (on-demand), 'spot' (Spot VMs: "
        "much cheaper, may be preempted with a 30 s notice; checkpoints go to AIP_CHECKPOINT_DIR and the job resumes "
        "from them) or 'flex_start' (Dynamic Workload Scheduler: queues until the GPUs are free). See docs/spot-training.md."
    )
    image_registry: str | None = Field(
        None, description="Artifact Registry repository of the project's images, REGION-docker.pkg.dev/PROJECT/REPO "
        "(None: <gcp_region>-docker.pkg.dev/<gcp_project>/flant5); `flant5 vertex build` pushes there.",
    )
    image_tag: str = Field("latest", description="Tag of the project's images (flant5-train, flant5-serve, flant5-serve-gpu).")
    train_container_uri: str | None = Field(
        None,
        description="Training image (None: the project's flant5-train image from training/Dockerfile in image_registry). "
        "A prebuilt image needs train_job_kind: script and a row in params/tables/images.yaml.",
    )
    serving_container_uri: str | None = Field(
        None, description="Serving image (None: the project's flant5-serve, or flant5-serve-gpu when "
        "deploy_accelerator_type is set). When set, `vertex train` also registers the model (job.run).",
    )
    train_display_name: str = Field("flan-t5-samsum-train", description="Vertex training job name.")
    model_display_name: str = Field("flan-t5-samsum", description="Model Registry display name.")
    endpoint_display_name: str = Field("flan-t5-samsum-endpoint", description="Endpoint display name.")
    deploy_machine_type: str = Field("n1-standard-4", description="Serving VM type.")
    deploy_accelerator_type: str | None = Field(None, description="Serving GPU type (None = CPU).")
    deploy_accelerator_count: int = Field(0, ge=0, description="GPUs per serving replica.")
    deploy_min_replicas: int = Field(1, ge=1, description="Minimum serving replicas.")
    deploy_max_replicas: int = Field(1, ge=1, description="Maximum serving replicas (autoscaling).")
    deploy_spot: bool = Field(False, description="Serve on Spot VMs (cheaper; a preempted replica is replaced, so run "
        "deploy_min_replicas >= 2 to keep answering meanwhile).")
    cleanup: bool = Field(False, description="Notebook 05: undeploy and delete the endpoint and model at the end.")
    train_preset: str | None = Field(
        None, description="Named machine preset (`flant5 vertex presets`); sets machine, accelerator, count and replicas."
    )
    train_job_kind: Literal["script", "container"] = Field(
        "container",
        description="'container' = CustomContainerTrainingJob on the project's training image (training/Dockerfile); "
        "'script' = CustomTrainingJob on a prebuilt PyTorch image that installs the project at start.",
    )
    train_requirements: list[str] | None = Field(
        None, description="pip requirements for 'script' jobs (None: the project's base and [train] dependencies, "
        "torch included, pinned to constraints.txt)."
    )
    train_output_dir: str | None = Field(
        None, description="gs:// base_output_dir of the training job (None: <staging_bucket>/runs/<train_display_name>)."
    )
    model_artifact_uri: str | None = Field(
        None, description="gs:// model folder for `vertex upload` (None: <train_output_dir>/model, where training writes it)."
    )
    serving_port: int = Field(8080, ge=1, le=65535, description="Port the serving container listens on (AIP_HTTP_PORT).")
    serving_predict_route: str = Field("/predict", description="Serving container predict route (AIP_PREDICT_ROUTE).")
    serving_health_route: str = Field("/health", description="Serving container health route (AIP_HEALTH_ROUTE).")
    deploy_traffic_percentage: int = Field(100, ge=0, le=100, description="Share of endpoint traffic sent to the new deployment.")
    vertex_request_timeout_s: float = Field(1800.0, gt=0, description="Timeout for long Vertex requests (deploy, upload).")
    predict_timeout_s: float = Field(60.0, gt=0, description="Client timeout of one endpoint prediction request.")
    batch_machine_type: str = Field("n1-standard-4", description="Batch prediction VM type.")
    batch_accelerator_type: str | None = Field(None, description="Batch prediction GPU type (None = CPU).")
    batch_accelerator_count: int = Field(0, ge=0, description="GPUs per batch prediction replica.")
    batch_replica_count: int = Field(1, ge=1, description="Batch prediction replicas.")
    batch_display_name: str = Field("flan-t5-samsum-batch", description="Batch prediction job name.")
    artifacts_local_dir: str = Field("serving/model", description="Local folder `vertex artifacts download` fills (the server's default model).")
    # --- release pipeline (`flant5 pipeline`, docs/release-pipeline.md) ---
    pipeline_root: str | None = Field(
        None, description="gs:// folder Vertex AI Pipelines writes the pipeline's artifacts to (None: <staging_bucket>/pipeline_root).")
    pipeline_display_name: str = Field("flan-t5-samsum-release", description="Vertex AI Pipelines job name.")
    pipeline_train_on: Literal["local", "vertex"] = Field(
        "local", description="Where the pipeline's training step trains: 'local' (in the step's own container) or "
        "'vertex' (the same job as `flant5 vertex train`).")
    gate_min_rouge1: float | None = Field(
        None, ge=0, le=100, description="Release gate: the candidate's test ROUGE-1 must reach this floor (None: no floor).")
    gate_min_rougeL: float | None = Field(
        None, ge=0, le=100, description="Release gate: the candidate's test ROUGE-L must reach this floor (None: no floor).")
    gate_metric: Literal["rouge1", "rouge2", "rougeL", "rougeLsum"] = Field(
        "rougeL", description="Release gate: the metric of the paired comparison with the incumbent.")
    gate_tolerance: float = Field(
        0.5, ge=0, le=100, description="Release gate: the lower end of the paired 95% interval of candidate minus "
        "incumbent (gate_metric, ROUGE points) must be above -gate_tolerance.")
    gate_against: Literal["incumbent_if_any", "incumbent", "floors_only"] = Field(
        "incumbent_if_any", description="Release gate: compare with the version aliased 'default' when there is one, "
        "require one ('incumbent'), or judge by the floors alone.")
    canary_traffic_percent: int = Field(
        10, ge=0, le=100, description="Release pipeline: share of the endpoint's traffic the new version gets until "
        "its smoke predictions pass (then 100%); a first deployment on an empty endpoint gets 100% at once.")
    smoke_predictions: int = Field(
        2, ge=1, le=50, description="Release pipeline: online predictions the canary itself must answer (the "
        "responses' deployedModelId) before it receives all the traffic.")
    smoke_min_summary_chars: int = Field(
        1, ge=0, description="Release pipeline: each smoke summary (online and batch) must have at least this many "
        "characters, or the release fails and serving is restored.")
    batch_smoke_examples: int = Field(
        4, ge=0, le=1000, description="Release pipeline: test dialogues sent through a BatchPredictionJob of the new "
        "version before promotion (0: no batch smoke test).")

    @field_validator("precision")
    @classmethod
    def _no_fp16(cls, value: str) -> str:
        if value == "fp16":
            raise ValueError("fp16 overflows in T5 (NaN losses); use 'bf16' or 'fp32'")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Params:
        problems: list[str] = []
        if self.eval_strategy == "steps" and self.eval_steps is None:
            problems.append("eval_steps: required when eval_strategy is 'steps'")
        if self.metric_for_best_model != "eval_loss" and self.eval_rouge_samples == 0 and self.eval_strategy != "no":
            problems.append("metric_for_best_model: ROUGE needs eval_rouge_samples > 0 (or use eval_loss)")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            problems.append("early_stopping_patience: needs eval_strategy 'steps' or 'epoch'")
        if self.deploy_max_replicas < self.deploy_min_replicas:
            problems.append("deploy_max_replicas: must be >= deploy_min_replicas")
        if self.staging_bucket is not None and not self.staging_bucket.startswith("gs://"):
            problems.append(f"staging_bucket: {self.staging_bucket!r} must start with gs://")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def with_overrides(self, **overrides: Any) -> Params:
        """Return a validated copy with some fields changed."""
        return build_params({**self.model_dump(exclude_unset=True), **overrides}, source="overrides")


# fields that were replaced: an old params file gets the new spelling instead of "unknown key"
RENAMED = {"train_spot": "replaced by scheduling_strategy; write `scheduling_strategy: spot` (or standard)"}


def _format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "params"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = RENAMED.get(loc) or "unknown key (check the spelling; `flant5 params list` shows every field)"
        parts.append(f"{loc}: {msg}" if loc != "params" else msg)
    return f"{source}: " + "; ".join(parts)


def build_params(values: dict[str, Any], source: str = "params") -> Params:
    """Validate a flat dict of overrides; every problem is named in one `ParamsError`."""
    try:
        return Params(**values)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(err, source)) from None


# --- per-call generation options ----------------------------------------------------------------
# The generation fields: saved in a model's generation_config.json, and overridable per call (a request's
# `parameters`, `flant5 summarize`'s flags, evaluation, notebooks). Their bounds are the Params fields' own.
GENERATION_FIELDS = ("num_beams", "max_new_tokens", "length_penalty", "no_repeat_ngram_size", "repetition_penalty")
_BOUNDS = ("gt", "ge", "lt", "le")


def field_bounds(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A field's numeric bounds as Field keywords ({'ge': 1, 'le': 16} for Params.num_beams)."""
    return {k: getattr(m, k) for m in model.model_fields[name].metadata for k in _BOUNDS if hasattr(m, k)}


MIN_NEW_TOKENS_HELP = "Fewest tokens generated per summary (per call only; clamped to max_new_tokens)."


def generation_options_model(
    name: str = "GenerationOverrides", *, upper: dict[str, float] | None = None, strict: bool = False,
    int_before: Callable[[Any], Any] | None = None,
) -> type[BaseModel]:
    """The per-call generation options as one pydantic model; None keeps the params' value (the model's
    generation_config.json). Each field's bounds are the Params field's own, tightened by `upper` (a server's
    serve_*_limit), so `flant5 summarize`'s flags, `--set`, evaluation, notebooks and a request's `parameters` refuse
    the same values. `int_before` runs before an integer field's check (the server turns 2.0 into 2: Vertex's SDK sends
    every number as a double)."""
    upper = upper or {}

    def option(field: str, annotation: Any, bounds: dict[str, Any], description: str | None) -> Any:
        if field in upper:
            bounds = {**bounds, "le": min(bounds.get("le", upper[field]), upper[field])}
        # the bounds first, then `int_before`: the JSON schema then states them as minimum/maximum
        extra = (BeforeValidator(int_before),) if int_before is not None and annotation is int else ()
        return Annotated[annotation, Field(**bounds), *extra] | None, Field(None, description=description)

    fields = {"min_new_tokens": option("min_new_tokens", int, {"ge": 0}, MIN_NEW_TOKENS_HELP)}
    for field in GENERATION_FIELDS:
        f = Params.model_fields[field]
        fields[field] = option(field, f.annotation, field_bounds(Params, field), f.description)
    return create_model(name, __config__=ConfigDict(extra="forbid", frozen=True, strict=strict),
                        __doc__="Per-call generation options; None keeps the params' value.", **fields)


GenerationOverrides = generation_options_model()


def generation_overrides(source: str = "overrides", *, as_flags: bool = False, **values: Any) -> Any:
    """The one check of per-call generation options: every bad one named in one `ParamsError`, as `--set` does
    (`as_flags`: named as the command-line flag the user typed, `--num-beams 99: ...`)."""
    try:
        return GenerationOverrides(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        if as_flags:
            raise ParamsError("; ".join(f"--{str(e['loc'][0]).replace('_', '-')} {e['input']}: {e['msg']}"
                                        for e in err.errors())) from None
        raise ParamsError(_format_validation_error(err, source)) from None


def read_yaml_file(path: str | os.PathLike[str], what: str = "params file", examples: str = "params/") -> Any:
    """A YAML file, local or gs://, parsed; a missing file or bad YAML is one ParamsError naming the file (and line).
    The one reader of the project's YAML inputs: params files here, space files in search_space."""
    p = str(path)
    if p.startswith("gs://"):
        from flant5_lib import storage

        text = storage.read_text(p)
    else:
        if not Path(p).is_file():
            raise ParamsError(f"{p}: {what} not found (see {examples} for examples)")
        text = Path(p).read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{p}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None


def read_params_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file of overrides (no validation): a local path, or a gs:// URI (a Vertex job reads its params
    from the bucket). The one reader of params files: the CLI, the runner, notebooks, jobs and the server use it."""
    p = str(path)
    data = read_yaml_file(p)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{p}: must be a mapping of field: value, got {type(data).__name__}")
    return data


def _fits(annotation: Any, value: Any) -> bool:
    from pydantic import TypeAdapter

    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return False
    return True


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parse `--set key=value` items; values are YAML scalars (so 1e-4, true, null work), read against the field's type.

    YAML alone reads `no`/`off`/`yes` as booleans and `123` as a number; when that does not fit the field but the
    text does (`eval_strategy=no`, `run_dir=123`), the text is kept.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        field = Params.model_fields.get(key)
        if field is not None and value != raw and not _fits(field.annotation, value) and _fits(field.annotation, raw):
            value = raw
        out[key] = value
    return out


def load_params(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Params:
    """Defaults, then the YAML file, then explicit overrides (CLI `--set` or notebook parameters)."""
    values: dict[str, Any] = {}
    source = "params"
    if path is not None:
        values.update(read_params_file(path))
        source = str(path)
    values.update(overrides or {})
    return build_params(values, source=source)


def params_from_namespace(namespace: dict[str, Any], params_file: str | None = None) -> Params:
    """Build `Params` from a notebook's globals: the names that are fields of `Params` are used.

    This is how a notebook turns its papermill-injected `parameters` into the typed model.
    """
    picked = {k: v for k, v in namespace.items() if k in Params.model_fields}
    return load_params(params_file, picked)


def describe_fields() -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field: for `flant5 params list` and docs/parameters.md."""
    rows = []
    for name, f in Params.model_fields.items():
        ann = getattr(f.annotation, "__name__", None) if isinstance(f.annotation, type) else None
        ann = ann or str(f.annotation).replace("typing.", "")
        rows.append((name, ann, f.default, f.description or ""))
    return rows


def save_params(params: Params, path: str | os.PathLike[str]) -> Path:
    """Write the fully resolved parameters next to a model, so a run can be reproduced."""
    from flant5_lib.fileio import write_text

    return write_text(path, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
