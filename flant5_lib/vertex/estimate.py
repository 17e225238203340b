"""Cost and duration of a Vertex training job, from params/prices.yaml and the dataset size.

Printed before every launch: a wrong accelerator count or a forgotten `max_train_samples` shows up
as a number in dollars before the money is spent. The table holds list prices to check, not a quote.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from flant5_lib.config import Params
from flant5_lib.errors import CloudError
from flant5_lib.vertex import presets
from flant5_lib.vertex.tables import PROJECT_ROOT, load_table

DEFAULT_PRICES = PROJECT_ROOT / "params" / "prices.yaml"


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The price table, with the Spot table beside it (spot-prices.yaml) as `spot_table` when there is one."""
    from flant5_lib.vertex.spot import load_spot_table

    where = Path(path) if path else DEFAULT_PRICES
    prices = load_table(where, ("prices_read_on", "machine_per_hour", "accelerator_per_hour", "throughput_per_gpu"),
                        "params/prices.yaml; pass --prices FILE")
    prices["spot_table"] = load_spot_table(where)
    return prices


def dataset_size(params: Params, prices: dict[str, Any]) -> int:
    """Training dialogues: max_train_samples, a known size, or counted from a local/synthetic dataset."""
    if params.max_train_samples:
        return params.max_train_samples
    known = prices.get("dataset_sizes", {})
    if params.dataset in known:
        return int(known[params.dataset])
    if params.dataset.startswith("synthetic") or Path(params.dataset).exists():
        from flant5_lib.data import Columns, load_split

        return len(load_split(params.dataset, "train", missing_split=params.missing_split, seed=params.seed,
                              columns=Columns.from_params(params)))
    raise CloudError(f"dataset: cannot count {params.dataset!r} offline; set max_train_samples or add it to "
                     "dataset_sizes in params/prices.yaml")


def _model_key(model_name: str, table: dict[str, Any]) -> str | None:
    name = model_name.rstrip("/").lower()
    for key in sorted(table, key=len, reverse=True):  # 'flan-t5-xl' before 'flan-t5-x...'
        if name.endswith(key.lower()) or name == key.lower():
            return key
    return None


def estimate(params: Params, prices: dict[str, Any], samples: int | None = None,
             preemptions_per_hour: float | None = None) -> dict[str, Any]:
    """Expected hours and cost of the training job, with the assumptions used; standard against Spot (`vertex.spot`)."""
    params = presets.resolve(params)
    n = samples if samples is not None else dataset_size(params, prices)
    gpus = params.train_accelerator_count if params.train_accelerator_type else 0
    acc = params.train_accelerator_type if gpus else "cpu"
    model = _model_key(params.model_name, prices["throughput_per_gpu"])
    if model is None:
        raise CloudError(f"model_name: {params.model_name!r} has no throughput row in the price table; "
                         f"known: {', '.join(prices['throughput_per_gpu'])}")
    per_gpu = prices["throughput_per_gpu"][model].get(acc)
    if per_gpu is None:
        raise CloudError(f"train_accelerator_type: no throughput for {model} on {acc} in the price table; add one")
    workers = max(1, gpus) * params.train_replica_count
    speed = per_gpu * (1 + (workers - 1) * float(prices.get("multi_gpu_efficiency", 0.9)))
    if params.max_steps > 0:
        seen = params.max_steps * params.per_device_train_batch_size * params.gradient_accumulation_steps * workers
    else:
        seen = n * params.num_train_epochs
    train_h = seen / speed / 3600
    total_h = train_h + float(prices.get("startup_minutes", 0)) / 60
    machine = prices["machine_per_hour"].get(params.train_machine_type)
    if machine is None:
        raise CloudError(f"train_machine_type: {params.train_machine_type!r} has no price in the table; add it")
    gpu_price = prices["accelerator_per_hour"].get(acc, 0.0) if gpus else 0.0
    hourly = (machine + gpu_price * gpus) * params.train_replica_count
    from flant5_lib.vertex.spot import compare

    try:
        spot = compare(params, prices, params.train_machine_type, machine, acc if gpus else None, gpu_price, gpus,
                       train_h, total_h, preemptions_per_hour)
    except CloudError:
        if params.scheduling_strategy == "spot":
            raise
        spot = None  # Spot would never finish at that rate; the standard estimate stands alone
    standard = {"usd_per_hour": round(hourly, 2), "total_hours": round(total_h, 2),
                "usd": round(math.ceil(total_h * hourly * 100) / 100, 2)}
    if params.scheduling_strategy == "spot":
        hourly, total_h = spot["usd_per_hour"], spot["total_hours"]
    return {
        "train_samples": n, "samples_seen": int(seen), "model": model, "accelerator": acc, "workers": workers,
        "samples_per_s": round(speed, 1), "train_hours": round(train_h, 2), "total_hours": round(total_h, 2),
        "usd_per_hour": round(hourly, 2), "usd": round(math.ceil(total_h * hourly * 100) / 100, 2),
        "spot": params.scheduling_strategy == "spot", "prices_read_on": prices["prices_read_on"],
        "standard_vs_spot": {"standard": standard, "spot": spot} if spot else None,
        "note": "list prices to check (see params/prices.yaml); throughput is a rough guess",
    }


def format_estimate(e: dict[str, Any]) -> str:
    return (f"estimate: {e['train_samples']} training dialogues, {e['samples_seen']} samples seen at "
            f"~{e['samples_per_s']}/s on {e['workers']} x {e['accelerator']} "
            f"-> ~{e['total_hours']} h (incl. start-up), ~${e['usd']} at ${e['usd_per_hour']}/h"
            f"{' (spot)' if e['spot'] else ''}; prices read {e['prices_read_on']}: list prices to check"
            + _format_spot(e))


def _format_spot(e: dict[str, Any]) -> str:
    both = e.get("standard_vs_spot")
    if not both:
        return ""
    st, sp = both["standard"], both["spot"]
    saved = st["usd"] - sp["usd"]
    return (f"\n  standard ~${st['usd']} (~{st['total_hours']} h) vs spot ~${sp['usd']} (~{sp['total_hours']} h at "
            f"{sp['preemptions_per_hour']:g} preemptions/h: +{sp['extra_hours']} h, ~{sp['expected_preemptions']} "
            f"preemptions; {sp['price_source']}): spot {'saves' if saved >= 0 else 'costs'} ~${abs(saved):.2f}")
