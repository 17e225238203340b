"""What a run's steps recorded under its work folder, read back: the one reader `flant5 pipeline status`, the
exit handler and the notebook share (no kfp here: the steps import it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flant5_lib.errors import UserError

RECORDS = ("preflight", "train", "gate", "register", "evaluation", "serving-before", "canary", "smoke", "promote",
           "stopped", "failure", "restored")


def status(work_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the steps recorded under work_dir: each step's record, the gate's decision, the outcome."""
    work = Path(work_dir)
    records = {}
    for step in RECORDS:
        f = work / f"{step}.json"
        if f.is_file():
            records[step] = json.loads(f.read_text(encoding="utf-8"))
    if not records:
        raise UserError(f"{work}: no pipeline records here (preflight.json ...); pass the --work-dir of a run")
    outcome = ("released" if "promote" in records else "stopped at the gate" if "stopped" in records
               else "failed, serving restored" if "restored" in records else "running or failed")
    return {"work_dir": str(work), "outcome": outcome, "steps": records}
