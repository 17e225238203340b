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
from flant5_lib.vertex.specs import resolve

DEFAULT_PRICES = Path(__file__).resolve().parents[2] / "params" / "prices.yaml"


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    from flant5_lib.vertex.tables import load_table

    return load_table(Path(path) if path else DEFAULT_PRICES,
                      ("prices_read_on", "machine_per_hour", "accelerator_per_hour", "throughput_per_gpu"),
                      "params/prices.yaml; pass --prices FILE")


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


def estimate(params: Params, prices: dict[str, Any], samples: int | None = None) -> dict[str, Any]:
    """Expected hours and cost of the training job, with the assumptions used."""
    params = resolve(params)
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
    if params.train_spot:
        hourly *= float(prices.get("spot_discount", 1.0))
    return {
        "train_samples": n, "samples_seen": int(seen), "model": model, "accelerator": acc, "workers": workers,
        "samples_per_s": round(speed, 1), "train_hours": round(train_h, 2), "total_hours": round(total_h, 2),
        "usd_per_hour": round(hourly, 2), "usd": round(math.ceil(total_h * hourly * 100) / 100, 2),
        "spot": params.train_spot, "prices_read_on": prices["prices_read_on"],
        "note": "list prices to check (see params/prices.yaml); throughput is a rough guess",
    }


def format_estimate(e: dict[str, Any]) -> str:
    return (f"estimate: {e['train_samples']} training dialogues, {e['samples_seen']} samples seen at "
            f"~{e['samples_per_s']}/s on {e['workers']} x {e['accelerator']} "
            f"-> ~{e['total_hours']} h (incl. start-up), ~${e['usd']} at ${e['usd_per_hour']}/h"
            f"{' (spot)' if e['spot'] else ''}; prices read {e['prices_read_on']}: list prices to check")
