"""Helpers for the training tests: small params, subprocess runs of the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from flant5_lib import procs
from flant5_lib.config import Params, build_params

from tests.helpers import REPO
VENV_BIN = Path(sys.executable).parent


def small_params(run_dir: Path, model_dir: Path, **overrides: Any) -> Params:
    """A few dozen optimiser steps of the tiny model on synthetic data: seconds on 2 CPU cores."""
    values: dict[str, Any] = dict(
        run_dir=str(run_dir),
        model_name=str(model_dir),
        dataset="synthetic:120",
        max_source_length=192,
        max_target_length=48,
        num_train_epochs=1,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        logging_steps=2,
        save_steps=5,
        eval_strategy="no",
    )
    values.update(overrides)
    return build_params(values)


def write_params(path: Path, params: Params) -> Path:
    path.write_text(yaml.safe_dump(params.model_dump(mode="json", exclude_unset=True)), encoding="utf-8")
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def start_training(params_file: Path, log_file: Path, *args: str, cli: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m flant5_lib.train` (or `flant5 train`) in a child process, output to a log file."""
    cmd = [str(VENV_BIN / "flant5"), "train"] if cli else [sys.executable, "-m", "flant5_lib.train"]
    cmd += ["--params", str(params_file), *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=log_file.open("w"), stderr=subprocess.STDOUT, env=env or child_env())


def wait_for(predicate: Any, proc: subprocess.Popen, timeout: float, what: str, log_file: Path) -> None:
    """procs.wait_for with the training log's tail in the failure (and the child killed on a time-out)."""
    try:
        procs.wait_for(predicate, timeout_s=timeout, what=what, proc=proc, interval_s=0.05)
    except (RuntimeError, TimeoutError) as err:
        procs.stop_process(proc, timeout_s=0)
        raise AssertionError(f"{err}:\n{log_file.read_text()[-3000:]}") from None
