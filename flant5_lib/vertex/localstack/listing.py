"""`filter` and `order_by` of the stand-in's list calls, as AIP-160 lists filter in the real API.

A cleanup loop such as `Model.list(filter='labels.run="abc"')` deletes whatever the list returns; a stand-in that
ignored the filter would let such a loop pass here and delete everything there. So a filter the stand-in cannot
read is refused (400 INVALID_ARGUMENT), never silently widened.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from flant5_lib.vertex.localstack.errors import ApiError

# snake_case names the filter and order_by use -> the resource's JSON field
_FIELDS = {"display_name": "displayName", "create_time": "createTime", "update_time": "updateTime",
           "state": "state", "name": "name"}
_TERM = re.compile(r'^\s*(?P<field>[A-Za-z_][\w.\-]*)\s*(?P<op>!=|=|:)\s*(?P<value>"[^"]*"|\S+)\s*$')


def _value(resource: dict[str, Any], field: str) -> Any:
    if field.startswith("labels."):
        return (resource.get("labels") or {}).get(field[len("labels."):])
    if field in ("labels",):
        return resource.get("labels") or {}
    key = _FIELDS.get(field, field)
    if key not in _FIELDS.values():
        raise ApiError(400, f"Unsupported field in filter or order_by: {field!r}.")
    return resource.get(key)


def _match(resource: dict[str, Any], term: str) -> bool:
    m = _TERM.match(term)
    if not m:
        raise ApiError(400, f"Invalid filter expression: {term!r}.")
    field, op, raw = m.group("field"), m.group("op"), m.group("value")
    want = raw[1:-1] if raw.startswith('"') else raw
    if op == ":" and field == "labels":  # labels:KEY = has the label
        return want in (resource.get("labels") or {})
    have = _value(resource, field)
    if op == ":":
        return have is not None and (want == "*" or want in str(have))
    equal = have is not None and str(have) == want
    return equal if op == "=" else not equal


def matches(resource: dict[str, Any], expression: str) -> bool:
    """`a="x" AND labels.k="v"` (AND binds tighter than OR; no parentheses)."""
    expression = expression.strip()
    if not expression:
        return True
    return any(all(_match(resource, t) for t in re.split(r"\s+AND\s+", alt))
               for alt in re.split(r"\s+OR\s+", expression))


def ordered(resources: list[dict[str, Any]], order_by: str) -> list[dict[str, Any]]:
    """Sort by `field [desc], field2` (stable, last key first)."""
    out = list(resources)
    for part in reversed([p.strip() for p in order_by.split(",") if p.strip()]):
        words = part.split()
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise ApiError(400, f"Invalid order_by: {part!r}.")
        field, desc = words[0], len(words) == 2 and words[1].lower() == "desc"
        _value({}, field)  # refuses unknown fields
        out.sort(key=lambda r: str(_value(r, field) or ""), reverse=desc)
    return out


def listing(items: dict[str, dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The list answer: copies of the resources that pass `filter`, in `order_by` order (creation order otherwise)."""
    expression = (query.get("filter") or [""])[0]
    order_by = (query.get("orderBy") or query.get("order_by") or [""])[0]
    found = [copy.deepcopy(v) for v in items.values() if matches(v, expression)]
    return ordered(found, order_by) if order_by else found
