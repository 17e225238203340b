"""Validation scores reported to Vertex AI hyperparameter tuning, in cloudml-hypertune's file format.

A trial of a Vertex AI tuning job reads its metric from `$CLOUD_ML_HP_METRIC_FILE` (default
`/tmp/hypertune/output.metrics`): JSON lines `{"global_step": "N", "<tag>": "<value>", "timestamp": T, "trial": "ID"}`,
one tag per line, the newest 100 lines kept. That is all `cloudml-hypertune` 0.1.0.dev6 does; this module writes the
same lines (atomically, so the service never reads half a file) instead of adding the package to the training image.

The trainer reports after every validation, under the tags `rouge1`, `rouge2`, `rougeL`, `rougeLsum` (F1 x 100, as on
the run page) and `eval_loss`, so a study's `metric_spec` may name any of them. It reports only inside a trial
(`CLOUD_ML_TRIAL_ID` or `CLOUD_ML_HP_METRIC_FILE` set): the same entry point runs unchanged without the service.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

METRIC_FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
TRIAL_ID_ENV = "CLOUD_ML_TRIAL_ID"
DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"
MAX_ENTRIES = 100  # cloudml-hypertune keeps the newest 100 lines
TAGS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "eval_loss")  # what a study's metric_spec may name


def in_trial(env: dict[str, str] | None = None) -> bool:
    """True inside a Vertex AI tuning trial (or wherever a metric file is asked for)."""
    env = dict(os.environ) if env is None else env
    return bool(env.get(TRIAL_ID_ENV) or env.get(METRIC_FILE_ENV))


def metric_file(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get(METRIC_FILE_ENV) or DEFAULT_METRIC_FILE)


class MetricReporter:
    """Writes cloudml-hypertune's lines: one `report` per tag and step, the newest MAX_ENTRIES kept."""

    def __init__(self, path: str | os.PathLike[str] | None = None, trial_id: str | None = None) -> None:
        self.path = Path(path) if path is not None else metric_file()
        self.trial_id = str(trial_id if trial_id is not None else os.environ.get(TRIAL_ID_ENV, 0))
        self.entries: deque[dict[str, Any]] = deque(maxlen=MAX_ENTRIES)

    def report(self, tag: str, value: float, global_step: int | None = None) -> None:
        """cloudml-hypertune's `report_hyperparameter_tuning_metric`."""
        self.report_many({tag: value}, global_step)

    def report_many(self, values: dict[str, float], global_step: int | None = None) -> None:
        for tag, value in values.items():
            self.entries.append({"timestamp": time.time(), "trial": self.trial_id, tag: str(float(value)),
                                 "global_step": str(int(global_step) if global_step else 0)})
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in self.entries), encoding="utf-8")
        os.replace(tmp, self.path)


def validation_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The reported tags from a Trainer evaluation's metrics (`eval_rougeLsum` -> `rougeLsum`)."""
    out = {}
    for tag in TAGS:
        value = metrics.get(tag if tag.startswith("eval_") else f"eval_{tag}")
        if isinstance(value, (int, float)):
            out[tag] = float(value)
    return out


class HypertuneCallback(TrainerCallback):
    """Reports every validation to the tuning service (the main process only: ranks share one trial)."""

    def __init__(self, reporter: MetricReporter | None = None) -> None:
        self.reporter = reporter or MetricReporter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # type: ignore[override]
        if not state.is_world_process_zero or not metrics:
            return
        scores = validation_scores(metrics)
        if scores:
            self.reporter.report_many(scores, state.global_step)
            log.info("reported to hyperparameter tuning (%s): %s at step %d", self.reporter.path,
                     ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), state.global_step)


def callbacks() -> list[Any]:
    """[HypertuneCallback] inside a tuning trial, [] otherwise (the trainer adds these to its own)."""
    return [HypertuneCallback()] if in_trial() else []
