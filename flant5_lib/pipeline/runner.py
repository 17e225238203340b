"""Run the release pipeline: offline with `kfp.local` (SubprocessRunner in this Python), or on Vertex AI Pipelines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from flant5_lib.config import Params
from flant5_lib.errors import UserError
from flant5_lib.pipeline.records import RECORDS, status

__all__ = ["RECORDS", "params_yaml", "pipeline_root", "run_local", "status", "submit"]


def params_yaml(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(exclude_unset=True), sort_keys=False)


def pipeline_root(params: Params) -> str:
    root = params.pipeline_root or (f"{params.staging_bucket.rstrip('/')}/pipeline_root" if params.staging_bucket else None)
    if not root or not root.startswith("gs://"):
        raise UserError(f"pipeline_root: {root!r} must be a gs://BUCKET/PATH folder (or set staging_bucket)")
    return root


def earlier_run(work_dir: str | os.PathLike[str], fresh: bool) -> list[Path]:
    """What an earlier run left in `work_dir` (to clear when `fresh`); refused in one line otherwise."""
    work = Path(work_dir)
    old = [work / f"{n}.json" for n in (*RECORDS, "compare")] + [work / "release.md"]
    old = [p for p in old + [work / d for d in ("candidate", "incumbent", "eval", "kfp")] if p.exists()]
    if old and not fresh:
        raise UserError(f"--work-dir {work}: holds an earlier run ({', '.join(p.name for p in old[:3])} ...); pass a "
                        "new folder, or --fresh to clear it")
    return old


def run_local(params: Params, work_dir: str | os.PathLike[str], *, deploy: bool = True,
              fresh: bool = False) -> dict[str, Any]:
    """The whole pipeline with kfp.local in subprocesses of this interpreter (no Docker, no network): the stand-in
    answers the Vertex calls when `params` point at it. Returns the summary `status` prints.

    A work folder holds one run: an earlier run's records would be read as this one's, and its candidate's
    checkpoints resumed. `fresh=True` clears them first; otherwise such a folder is refused."""
    import shutil

    from kfp import local

    from flant5_lib.pipeline import graph

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for p in earlier_run(work, fresh):
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    # raise_on_error=False: a failed step must still reach the exit handler (restore serving, write the page);
    # the outcome is read from the records
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"),
               raise_on_error=False)
    graph.build(params)(params_yaml=params_yaml(params), work_dir=str(work), deploy=deploy)
    return status(work)


def submit(params: Params, spec: str, work_dir: str, *, deploy: bool = True) -> Any:
    """Submit the compiled spec as a Vertex AI PipelineJob; returns the job (not awaited)."""
    from flant5_lib.vertex.jobs import init_sdk

    aiplatform = init_sdk(params)
    if params.vertex_mode == "local":  # the stand-in's project number, where the SDK would ask Resource Manager
        from flant5_lib.vertex.localstack import answer_project_number

        answer_project_number(params.gcp_project)
    job = aiplatform.PipelineJob(
        display_name=params.pipeline_display_name, template_path=spec, pipeline_root=pipeline_root(params),
        parameter_values={"params_yaml": params_yaml(params), "work_dir": work_dir, "deploy": deploy},
        enable_caching=False)
    job.submit(service_account=params.service_account)
    return job
