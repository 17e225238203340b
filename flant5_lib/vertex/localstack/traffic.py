"""An endpoint's traffic split in the stand-in: Vertex's refusals, and routing predictions by the split.

Vertex refuses a split whose shares do not sum to 100 and one naming a deployed model the endpoint does not have
("0" stands for the model being deployed). Routing is deterministic so a test can check it: prediction n of an
endpoint goes to the deployed model whose slice of 0..99 holds (n * 37) mod 100. 37 is coprime with 100, so every
100 consecutive predictions split exactly by the shares, interleaved rather than in blocks. (Vertex draws at random;
only the proportions are promised.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flant5_lib.vertex.localstack.errors import ApiError

_STRIDE = 37


def check_split(split: Mapping[str, Any], deployed: Iterable[str], endpoint: str, *, new: bool = False) -> dict[str, int]:
    """The split as {deployed model id: share}, or a 400 as Vertex answers; `new`: "0" names the model being
    deployed."""
    known = set(deployed) | ({"0"} if new else set())
    out: dict[str, int] = {}
    for key, value in split.items():
        if key not in known:
            raise ApiError(400, f"Deployed model {key} in the traffic split is not deployed to Endpoint {endpoint}.")
        if not isinstance(value, (int, float)) or int(value) != value or not 0 <= value <= 100:
            raise ApiError(400, f"Traffic split value for deployed model {key} must be an integer from 0 to 100.")
        out[key] = int(value)
    if out and sum(out.values()) != 100:
        raise ApiError(400, "Sum of all traffic within traffic split needs to be 100.")
    return out


def pick(split: Mapping[str, int], counter: int) -> str:
    """The deployed model id prediction number `counter` goes to (`split`: the serving shares, summing to 100)."""
    slot = (counter * _STRIDE) % 100
    total = sum(split.values())
    edge = 0
    ids = sorted(split)
    for dmid in ids:
        edge += split[dmid] * 100 / total
        if slot < edge:
            return dmid
    return ids[-1]
