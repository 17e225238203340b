"""Standard against Spot for a training job: the Spot hourly price (params/tables/spot-prices.yaml, beside
params/prices.yaml) and the time preemptions add at a stated rate. `estimate.estimate` adds both to every estimate.

Time with preemptions: each preemption costs a restart (`startup_minutes`) plus the work lost since the last
complete checkpoint (`lost_minutes_per_preemption`: with the SIGTERM save, about one step). Preemptions also strike
the extra time itself, so the running time T becomes T / (1 - rate x cost); at rate x cost >= 1 the job would never
finish, and the estimate says so instead of printing a number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from flant5_lib.errors import CloudError
from flant5_lib.vertex.tables import load_table

SPOT_TABLE_NAME = "spot-prices.yaml"


def load_spot_table(prices_path: Path) -> dict[str, Any] | None:
    """The Spot table beside a price table, or in its tables/ folder (params/tables/spot-prices.yaml for
    params/prices.yaml); None when there is none (a user's own prices.yaml alone: its `spot_discount` applies)."""
    for path in (prices_path.with_name(SPOT_TABLE_NAME), prices_path.parent / "tables" / SPOT_TABLE_NAME):
        if path.is_file():
            return load_table(path, ("read_on", "machine_per_hour", "accelerator_per_hour", "fallback_fraction"),
                              f"params/tables/{SPOT_TABLE_NAME}")
    return None


def spot_hourly(machine: str, on_demand_machine: float, accelerator: str | None, on_demand_gpu: float, gpus: int,
                prices: dict[str, Any]) -> tuple[float, str]:
    """(Spot USD per hour of one replica, where the figure came from)."""
    table = prices.get("spot_table")
    if table is None:  # a price table without a Spot table beside it: its one `spot_discount` fraction
        fraction = float(prices.get("spot_discount", 1.0))
        return (on_demand_machine + on_demand_gpu * gpus) * fraction, f"{fraction:g} x on-demand (spot_discount)"
    fraction = float(table["fallback_fraction"])
    m = table["machine_per_hour"].get(machine)
    g = (table["accelerator_per_hour"] or {}).get(accelerator) if accelerator else None
    vm = float(m) if m is not None else on_demand_machine * fraction
    gpu = float(g) if g is not None else on_demand_gpu * fraction
    parts = [f"VM {'listed' if m is not None else f'{fraction:g} x on-demand'}"]
    if gpus:
        parts.append(f"GPU {'listed' if g is not None else f'{fraction:g} x on-demand'}")
    return vm + gpu * gpus, f"{', '.join(parts)}; Spot table read {table['read_on']}"


def with_preemptions(train_hours: float, startup_hours: float, rate: float, restart_minutes: float,
                     lost_minutes: float) -> dict[str, Any]:
    """Expected hours of a Spot job preempted `rate` times per running hour."""
    if rate < 0:
        raise CloudError(f"--preemptions-per-hour: {rate:g} must be >= 0")
    cost_h = (restart_minutes + lost_minutes) / 60
    if rate * cost_h >= 1:
        raise CloudError(f"--preemptions-per-hour: at {rate:g} preemptions per hour, each costing "
                         f"{cost_h * 60:.0f} min, the job would never finish; use standard or a lower rate")
    running = train_hours / (1 - rate * cost_h)
    return {"preemptions_per_hour": rate, "expected_preemptions": round(rate * running, 2),
            "extra_hours": round(running - train_hours, 2), "total_hours": round(running + startup_hours, 2)}


def compare(params: Any, prices: dict[str, Any], machine: str, on_demand_machine: float, accelerator: str | None,
            on_demand_gpu: float, gpus: int, train_hours: float, standard_total_hours: float,
            preemptions_per_hour: float | None = None) -> dict[str, Any]:
    """The Spot side of the estimate: price per hour, expected hours and dollars at the stated preemption rate."""
    hourly, source = spot_hourly(machine, on_demand_machine, accelerator, on_demand_gpu, gpus, prices)
    hourly *= params.train_replica_count
    table = prices.get("spot_table") or {}
    rate = preemptions_per_hour if preemptions_per_hour is not None else float(table.get("preemptions_per_hour", 0.0))
    restart = float(prices.get("startup_minutes", 0))
    times = with_preemptions(train_hours, standard_total_hours - train_hours, rate, restart,
                             float(table.get("lost_minutes_per_preemption", 0.5)))
    return {"usd_per_hour": round(hourly, 2), "usd": round(math.ceil(times["total_hours"] * hourly * 100) / 100, 2),
            "price_source": source, **times}
