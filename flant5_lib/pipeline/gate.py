"""The release gate: floors on the candidate's own scores and the paired interval against the incumbent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flant5_lib.config import Params

FLOORS = (("rouge1", "gate_min_rouge1"), ("rougeL", "gate_min_rougeL"))


def decide(params: Params, candidate: Mapping[str, Any], pair: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"passed", "reasons", "checks"}: every check with its value and threshold; `reasons` names each failed one.

    `candidate` is the candidate's metrics.json (ROUGE means x 100); `pair` is the compare.json pair of incumbent (a)
    and candidate (b) from `flant5_lib.compare.compare_systems`, or None when there is no incumbent."""
    checks: list[dict[str, Any]] = []
    for metric, field in FLOORS:
        floor = getattr(params, field)
        if floor is not None:
            value = float(candidate[metric])
            checks.append({"check": field, "metric": metric, "value": round(value, 4), "threshold": floor,
                           "passed": value >= floor,
                           "reason": f"{field}: candidate {metric} {value:.2f} is below the floor {floor:g}"})
    if pair is not None:
        m = pair["metrics"][params.gate_metric]
        lo, hi = m["ci"]
        checks.append({"check": "gate_tolerance", "metric": params.gate_metric, "value": round(float(lo), 4),
                       "threshold": -params.gate_tolerance, "diff": m["diff"], "ci": [lo, hi], "p_value": m["p_value"],
                       "passed": lo > -params.gate_tolerance,
                       "reason": f"gate_tolerance: candidate minus incumbent {params.gate_metric} {m['diff']:+.2f} "
                                 f"(paired 95% CI {lo:+.2f} to {hi:+.2f}) may be worse by more than "
                                 f"{params.gate_tolerance:g} points"})
    elif params.gate_against == "incumbent":
        checks.append({"check": "gate_against", "passed": False,
                       "reason": "gate_against: 'incumbent' is set but no version of the model is aliased 'default'"})
    failed = [c["reason"] for c in checks if not c["passed"]]
    return {"passed": not failed, "reasons": failed, "checks": checks,
            "against": "incumbent" if pair is not None else "floors only"}
