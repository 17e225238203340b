"""Checkpoints that survive preemption: atomic folders, a completion marker, rotation, gs:// mirroring.

transformers' Trainer writes `checkpoint-N/` file by file in place, so a kill mid-save leaves a folder that
`get_last_checkpoint` would happily resume from. Here a checkpoint is written under `.staging/`, completed
with a marker file (step, model fingerprint, file sizes), fsynced and renamed into place. "The newest complete
checkpoint" is the highest N whose marker exists and whose files all have the recorded sizes, locally or
in gs:// (uploads put the marker last, deletions remove it first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from flant5_lib.errors import ModelError

log = logging.getLogger(__name__)

MARKER = "flant5_checkpoint.json"
RUN_TOTALS = "flant5_run_totals.json"  # loss summed over every step so far: whole-run train_loss after resumes
STAGING = ".staging"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(folder: Path, step: int, fingerprint: dict[str, Any]) -> None:
    """Record what the checkpoint holds; written last, so its presence means the rest is on disk."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"step": step, "fingerprint": fingerprint, "files": files}, indent=1), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: Path) -> bool:
    """Marker present and every file it lists present with the recorded size."""
    marker = read_marker(folder)
    if not marker:
        return False
    for rel, size in marker.get("files", {}).items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-N folder under root, oldest first (complete or not)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def newest_complete(root: Path) -> Path | None:
    for _, folder in reversed(list_checkpoints(root)):
        if is_complete(folder):
            return folder
    return None


def _remove(folder: Path) -> None:
    """Rename aside first (atomic), then delete: a half-deleted folder never keeps its checkpoint name."""
    trash = folder.parent / f".trash-{folder.name}-{os.getpid()}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_incomplete(root: Path) -> None:
    """Drop staging leftovers and checkpoint folders a kill left half-written (main process only)."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name == STAGING or p.name.startswith(".trash-"):
            shutil.rmtree(p, ignore_errors=True)
    for step, folder in list_checkpoints(root):
        if not is_complete(folder):
            log.warning("removing incomplete checkpoint %s (interrupted while it was written)", folder)
            _remove(folder)


def clear_checkpoints(root: Path) -> None:
    """resume=never: old checkpoints of an earlier run must not be mixed with this run's."""
    for _, folder in list_checkpoints(root):
        log.warning("resume=never: deleting old checkpoint %s", folder)
        _remove(folder)


def rotate(root: Path, keep: int, protect: int | None = None) -> None:
    """Keep the `keep` newest complete checkpoints, and the one of step `protect` (the best so far) as well."""
    complete = [f for s, f in list_checkpoints(root) if is_complete(f) and s != protect]
    for folder in complete[: max(0, len(complete) - keep)]:
        _remove(folder)


def publish(staging_folder: Path, final_root: Path, step: int, fingerprint: dict[str, Any]) -> Path:
    """Marker, fsync, rename `.staging/checkpoint-N` to `checkpoint-N`: the atomic step."""
    write_marker(staging_folder, step, fingerprint)
    _fsync_tree(staging_folder)
    final = final_root / staging_folder.name
    if final.exists():
        _remove(final)
    os.replace(staging_folder, final)
    with contextlib.suppress(OSError):
        staging_folder.parent.rmdir()  # empty .staging/ left behind otherwise
    fd = os.open(final_root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def check_compatible(folder: Path, fingerprint: dict[str, Any]) -> None:
    """A checkpoint written for another model (or LoRA layout) cannot be resumed into this one."""
    saved = (read_marker(folder) or {}).get("fingerprint", {})
    diffs = [f"{k} {saved.get(k)!r} vs {v!r}" for k, v in fingerprint.items() if k in saved and saved.get(k) != v]
    if diffs:
        raise ModelError(
            f"{folder}: checkpoint was written for another model ({'; '.join(diffs[:4])} in checkpoint vs this run); "
            f"use another run_dir, delete {folder.parent}, or set resume=never"
        )


# --- gs:// mirror -----------------------------------------------------------------------------


def _remote_checkpoints(uri: str) -> dict[str, dict[str, int]]:
    """{checkpoint-N: {relative file: size}} of what is under the gs:// checkpoint folder."""
    from flant5_lib import storage

    client = storage.storage_client()
    bucket_name, prefix = storage.split_gcs(uri)
    base = f"{prefix}/" if prefix else ""
    out: dict[str, dict[str, int]] = {}
    for blob in client.list_blobs(bucket_name, prefix=base):
        rel = blob.name[len(base) :]
        top, _, rest = rel.partition("/")
        if _CKPT_RE.match(top) and rest:
            out.setdefault(top, {})[rest] = int(blob.size or 0)
    return out


def _remote_complete(files: dict[str, int], uri: str, name: str) -> bool:
    from flant5_lib import storage

    if MARKER not in files:
        return False
    try:
        marker = json.loads(storage.read_text(storage.join_gcs(uri, name, MARKER)))
    except (ValueError, Exception):  # unreadable marker = incomplete upload
        return False
    return all(files.get(rel) == size for rel, size in marker.get("files", {}).items())


def download_newest(uri: str, root: Path) -> Path | None:
    """Before training on a fresh VM: fetch the newest complete remote checkpoint if newer than any local one."""
    remote = _remote_checkpoints(uri)
    steps = sorted(((int(_CKPT_RE.match(n).group(1)), n) for n in remote), reverse=True)  # type: ignore[union-attr]
    local = newest_complete(root)
    local_step = int(_CKPT_RE.match(local.name).group(1)) if local else -1  # type: ignore[union-attr]
    for step, name in steps:
        if step <= local_step:
            break
        if _remote_complete(remote[name], uri, name):
            return _download(uri, name, root)
        log.warning("skipping incomplete remote checkpoint %s/%s", uri, name)
    return local


def _download(uri: str, name: str, root: Path) -> Path:
    from flant5_lib import storage

    target = root / name
    if target.exists():
        _remove(target)
    storage.download_dir(storage.join_gcs(uri, name), target)
    log.info("downloaded checkpoint %s from %s", name, uri)
    return target


def fetch(root: Path, step: int, uri: str | None) -> Path | None:
    """checkpoint-<step>, complete, from local disk or else from the gs:// mirror (a resumed run on a fresh VM
    holds only the newest one locally, while the best may be older)."""
    folder = root / f"checkpoint-{step}"
    if is_complete(folder):
        return folder
    if uri:
        remote = _remote_checkpoints(uri)
        if folder.name in remote and _remote_complete(remote[folder.name], uri, folder.name):
            got = _download(uri, folder.name, root)
            if is_complete(got):
                return got
    return None


def upload_checkpoint(folder: Path, uri: str, keep_names: set[str]) -> None:
    """Upload files, marker last; then delete remote checkpoints no longer kept locally (marker first)."""
    from flant5_lib import storage

    client = storage.storage_client()
    dest = storage.join_gcs(uri, folder.name)
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MARKER:
            storage.upload_file(p, storage.join_gcs(dest, p.relative_to(folder).as_posix()), client=client)
    storage.upload_file(folder / MARKER, storage.join_gcs(dest, MARKER), client=client)
    bucket_name, prefix = storage.split_gcs(uri)
    bucket = client.bucket(bucket_name)
    for name, files in _remote_checkpoints(uri).items():
        if name in keep_names:
            continue
        ordered = sorted(files, key=lambda rel: rel != MARKER)  # marker first
        for rel in ordered:
            bucket.blob(f"{prefix}/{name}/{rel}" if prefix else f"{name}/{rel}").delete()
        log.info("deleted old remote checkpoint %s/%s", uri, name)
