"""Model Registry versions in the stand-in, with the REST shapes Vertex uses.

A model is one id with numbered versions. `models:upload` with `parentModel` adds version N+1 to that model (its
`versionAliases` from the request, `default` moved to it when the request lists it, which the SDK does for
`is_default_version=True`); `models/{id}@{version}` and `models/{id}@{alias}` name one version,
`models/{id}:listVersions` lists them (`{"models": [...]}`), `:mergeVersionAliases` adds aliases and removes `-alias`
ones. Refused as Vertex refuses: one alias on two versions (400), removing `default`, an alias that looks like a
version number, deleting the default version (400 FAILED_PRECONDITION). `Backend.models[id]` always holds the default
version, so getting, deploying and listing a model without `@` work as before.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from flant5_lib.vertex.localstack.backend import Backend, now
from flant5_lib.vertex.localstack.errors import ApiError

_ALIAS = re.compile(r"^[a-z][a-z0-9-]{0,126}[a-z0-9]$")  # Vertex: lowercase, digits, '-'; not a number


def versions_of(b: Backend, mid: str, full: str | None = None) -> dict[str, dict[str, Any]]:
    """versionId -> record of one model (version 1 is the record `register_model` made)."""
    if mid not in b.models:
        raise ApiError(404, f"Model {full or mid} is not found.")
    table = b.model_versions.setdefault(mid, {})
    if not table:
        first = b.models[mid]
        table[first.get("versionId", "1")] = first
    return table


def _check_aliases(aliases: list[str]) -> None:
    for alias in aliases:
        bare = alias[1:] if alias.startswith("-") else alias
        if not _ALIAS.match(bare) or bare.isdigit():
            raise ApiError(400, f"Invalid version alias {alias!r}: an alias is lowercase letters, digits and '-', "
                                "starts with a letter and is not a version number.")


def _with_name(record: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(record)


def _set_default(b: Backend, mid: str, vid: str) -> None:
    table = versions_of(b, mid)
    for v, rec in table.items():
        rec["versionAliases"] = [a for a in rec.get("versionAliases", []) if a != "default" or v == vid]
    if "default" not in table[vid]["versionAliases"]:
        table[vid]["versionAliases"].insert(0, "default")
    b.models[mid] = table[vid]


def resolve(b: Backend, mid: str, version: str | None, full: str) -> dict[str, Any]:
    """The record `models/{id}@{version or alias}` names (the default version without `@`)."""
    table = versions_of(b, mid, full)
    if not version:
        return b.models[mid]
    if version in table:
        return table[version]
    for rec in table.values():
        if version in rec.get("versionAliases", []):
            return rec
    raise ApiError(404, f"Model {full} is not found.")


def upload_version(b: Backend, parent_model: str, model: dict[str, Any]) -> dict[str, Any]:
    """`models:upload` with `parentModel`: the next version of that model; returns the new version's record."""
    mid = parent_model.rsplit("/", 1)[-1].split("@")[0]
    table = versions_of(b, mid, parent_model)
    aliases = list(model.get("versionAliases") or [])
    _check_aliases(aliases)
    taken = {a: v for v, rec in table.items() for a in rec.get("versionAliases", [])}
    clash = [a for a in aliases if a != "default" and a in taken]
    if clash:
        raise ApiError(400, f"Version alias {clash[0]!r} is already used by version {taken[clash[0]]} of model "
                            f"{b.models[mid]['name']}; an alias names one version.")
    vid = str(max(int(v) for v in table) + 1)
    base = b.models[mid]
    record = {
        **{k: v for k, v in model.items() if k != "versionAliases"},
        "name": base["name"], "versionId": vid, "versionAliases": [a for a in aliases if a != "default"],
        "createTime": base.get("createTime", now()), "updateTime": now(), "versionCreateTime": now(),
        "versionUpdateTime": now(),
        "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
    }
    table[vid] = record
    if "default" in aliases:
        _set_default(b, mid, vid)
    return record


def list_versions(b: Backend, mid: str, full: str) -> dict[str, Any]:
    table = versions_of(b, mid, full)
    return {"models": [_with_name(table[v]) for v in sorted(table, key=int)]}


def merge_aliases(b: Backend, mid: str, version: str | None, full: str, aliases: list[str]) -> dict[str, Any]:
    """`:mergeVersionAliases`: `alias` adds, `-alias` removes; `default` moves and cannot be removed."""
    record = resolve(b, mid, version, full)
    _check_aliases(aliases)
    if "-default" in aliases:
        raise ApiError(400, "The alias 'default' cannot be removed; make another version the default instead.")
    table = versions_of(b, mid)
    for alias in aliases:
        if alias.startswith("-"):
            record["versionAliases"] = [a for a in record.get("versionAliases", []) if a != alias[1:]]
            continue
        owner = next((v for v, rec in table.items() if alias in rec.get("versionAliases", [])), None)
        if owner == record["versionId"]:
            continue
        if alias == "default":
            _set_default(b, mid, record["versionId"])
            continue
        if owner is not None:
            raise ApiError(400, f"Version alias {alias!r} is already used by version {owner} of model "
                                f"{record['name']}; remove it there first (-{alias}).")
        record.setdefault("versionAliases", []).append(alias)
    record["versionUpdateTime"] = now()
    return _with_name(record)


def delete_version(b: Backend, mid: str, version: str, full: str) -> None:
    """DELETE models/{id}@{version}: refused for the default version (delete the model, or move `default`)."""
    record = resolve(b, mid, version, full)
    if "default" in record.get("versionAliases", []):
        raise ApiError(400, f"Model version {full} is the default version and cannot be deleted; move the 'default' "
                            "alias to another version first.", "FAILED_PRECONDITION")
    del versions_of(b, mid)[record["versionId"]]
