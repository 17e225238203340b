"""The run's page: release.md in the work folder, written by the exit handler whatever the outcome, so a person
reads one file (the gate's checks, the version, the traffic, what was restored) instead of eight JSON records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flant5_lib.fileio import write_text

PAGE = "release.md"


def render(state: str, summary: dict[str, Any]) -> str:
    steps = summary.get("steps", {})
    lines = [f"# Release run: {summary.get('outcome', 'failed')}", "",
             f"Pipeline state: `{state}`. Work folder: `{summary.get('work_dir', '')}`.", ""]
    pre = steps.get("preflight")
    if pre:
        lines += [f"- test examples: {pre['test_examples']}", f"- incumbent: `{pre['incumbent'] or 'none (first release)'}`"]
    gate = steps.get("gate")
    if gate:
        lines += ["", "## Gate", "", "| check | result |", "|---|---|"]
        lines += [f"| {c['check']} | {'pass' if c['passed'] else 'FAIL: ' + c['reason']} |" for c in gate["checks"]]
    for key, title in (("register", "Registered"), ("evaluation", "Evaluation imported"), ("canary", "Canary"),
                       ("smoke", "Smoke tests"), ("promote", "Promoted"), ("stopped", "Stopped"),
                       ("failure", "Failed step"), ("restored", "Serving restored")):
        rec = steps.get(key)
        if rec:
            lines += ["", f"## {title}", ""] + [f"- {k}: `{_short(v)}`" for k, v in rec.items()]
    return "\n".join(lines) + "\n"


def write_page(work: Path, state: str, summary: dict[str, Any]) -> Path:
    return write_text(Path(work) / PAGE, render(state, summary))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def gate_table(summary: dict[str, Any]) -> Any:
    """The gate's checks of a run as a DataFrame (check, passed, reason): the decision at a glance."""
    import pandas as pd

    checks = (summary.get("steps", {}).get("gate") or {}).get("checks", [])
    cols = ["check", "value", "threshold", "passed", "reason"]
    return pd.DataFrame([{"check": c["check"], "value": c.get("value"), "threshold": c.get("threshold"),
                          "passed": bool(c["passed"]), "reason": "" if c["passed"] else c["reason"]}
                         for c in checks], columns=cols)
