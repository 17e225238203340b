"""What a release costs before it runs: each step's image, machine, expected hours and dollars (`--dry-run`).

Training is `flant5 vertex estimate`'s figure (the job `vertex train` launches, or the step's own machine when
`pipeline_train_on: local`); evaluation is the test split at `pipeline.eval_dialogues_per_s` on the step machine
(once per model scored); every other step is `pipeline.step_minutes` on the step machine. All from
params/prices.yaml: list prices and guesses to check, not a quote.
"""

from __future__ import annotations

import math
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError

EVAL_STEPS = ("evaluate-candidate", "evaluate-incumbent")


def _usd(hours: float, per_hour: float) -> float:
    return math.ceil(hours * per_hour * 100) / 100


def plan(params: Params, steps: tuple[str, ...], image: str, test_examples: int | None = None,
         prices: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row per step, and the total; `test_examples` defaults to max_eval_samples or SAMSum's 819."""
    from flant5_lib.vertex import estimate

    prices = prices or estimate.load_prices()
    table = prices.get("pipeline") or {}
    if not table:
        raise CloudError("params/prices.yaml has no 'pipeline' section (step_machine, step_minutes, "
                         "eval_dialogues_per_s); add it")
    machine = table["step_machine"]
    per_hour = prices["machine_per_hour"].get(machine)
    if per_hour is None:
        raise CloudError(f"pipeline.step_machine: {machine!r} has no price in machine_per_hour; add it")
    n = test_examples or params.max_eval_samples or 819
    model = estimate._model_key(params.model_name, table["eval_dialogues_per_s"])
    if model is None:
        raise CloudError(f"model_name: {params.model_name!r} has no row in pipeline.eval_dialogues_per_s in "
                         "params/prices.yaml; add one")
    short_h = float(table["step_minutes"]) / 60
    rows = []
    for step in steps:
        on_step, job_h, job_usd, note, where = short_h, 0.0, 0.0, "", machine  # hours on the step machine; the job's
        if step == "train" and params.pipeline_train_on == "vertex":
            job = estimate.estimate(params, prices)
            job_h, job_usd = job["total_hours"], job["usd"]
            where = f"{machine} + {params.train_machine_type} x {params.train_replica_count}"
            note = f"the `vertex train` job: {job['workers']} x {job['accelerator']}, ~{job['total_hours']} h"
        elif step == "train":
            job = estimate.estimate(params.with_overrides(train_accelerator_type="", train_accelerator_count=0,
                                                          train_machine_type=machine, train_replica_count=1), prices)
            on_step += job["train_hours"]
            note = "pipeline_train_on: local trains on the step's CPU machine (smoke runs only)"
        elif step in EVAL_STEPS:
            on_step += n / float(table["eval_dialogues_per_s"][model]) / 3600
            note = f"{n} test dialogues" + (" (skipped on a first release)" if step == "evaluate-incumbent" else "")
        elif step == "stopped":
            note = "instead of register ... promote, when the gate stops the candidate"
        rows.append({"step": step, "image": image, "machine": where, "hours": round(on_step + job_h, 2),
                     "usd": round(_usd(on_step, per_hour) + job_usd, 2), "note": note})
    return {"steps": rows, "total_usd": round(sum(r["usd"] for r in rows), 2),
            "total_hours": round(sum(r["hours"] for r in rows), 2), "prices_read_on": prices["prices_read_on"],
            "note": "list prices and guesses to check (params/prices.yaml); serving the canary is the endpoint's cost"}
