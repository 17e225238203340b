"""Run the release pipeline: offline with `kfp.local` (SubprocessRunner in this Python), or on Vertex AI Pipelines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from flant5_lib.config import Params
from flant5_lib.errors import UserError


def params_yaml(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(exclude_unset=True), sort_keys=False)


def pipeline_root(params: Params) -> str:
    root = params.pipeline_root or (f"{params.staging_bucket.rstrip('/')}/pipeline_root" if params.staging_bucket else None)
    if not root or not root.startswith("gs://"):
        raise UserError(f"pipeline_root: {root!r} must be a gs://BUCKET/PATH folder (or set staging_bucket)")
    return root


def run_local(params: Params, work_dir: str | os.PathLike[str], *, deploy: bool = True) -> dict[str, Any]:
    """The whole pipeline with kfp.local in subprocesses of this interpreter (no Docker, no network): the stand-in
    answers the Vertex calls when `params` point at it. Returns the summary `status` prints."""
    from kfp import local

    from flant5_lib.pipeline import graph

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"),
               raise_on_error=True)
    graph.build(params)(params_yaml=params_yaml(params), work_dir=str(work), deploy=deploy)
    return status(work)


def submit(params: Params, spec: str, work_dir: str, *, deploy: bool = True) -> Any:
    """Submit the compiled spec as a Vertex AI PipelineJob; returns the job (not awaited)."""
    from flant5_lib.vertex.jobs import init_sdk

    aiplatform = init_sdk(params)
    job = aiplatform.PipelineJob(
        display_name=params.pipeline_display_name, template_path=spec, pipeline_root=pipeline_root(params),
        parameter_values={"params_yaml": params_yaml(params), "work_dir": work_dir, "deploy": deploy},
        enable_caching=False)
    job.submit(service_account=params.service_account)
    return job


def status(work_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the steps recorded under work_dir: each step's record, the gate's decision, the outcome."""
    work = Path(work_dir)
    records = {}
    for step in ("preflight", "train", "gate", "register", "promote", "stopped"):
        f = work / f"{step}.json"
        if f.is_file():
            records[step] = json.loads(f.read_text(encoding="utf-8"))
    if not records:
        raise UserError(f"{work}: no pipeline records here (preflight.json ...); pass the --work-dir of a run")
    outcome = ("released" if "promote" in records else "stopped at the gate" if "stopped" in records
               else "running or failed")
    return {"work_dir": str(work), "outcome": outcome, "steps": records}
