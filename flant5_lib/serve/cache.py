"""The serving cache: copies derived from a model folder (its CTranslate2 conversion, a LoRA adapter merged into its
base), kept in one cache folder and never inside the model folder, which may be read-only (a `/gcs/` mount, a model
baked into an image). Entries are keyed by the model's content, so a copy of the same model (new mtimes) reuses its
entry and a changed weight file never serves a stale one. Deleting the cache folder is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from flant5_lib.errors import ModelError

log = logging.getLogger(__name__)

CACHE_ENV = "FLANT5_CACHE_DIR"
MODEL_FILES = ("*.json", "*.safetensors", "*.model")  # config, tokenizer and generation files, weights, SentencePiece


def cache_root() -> Path:
    """FLANT5_CACHE_DIR, else $XDG_CACHE_HOME/flant5, else ~/.cache/flant5."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "flant5"


def content_hash(folder: Path, patterns: Iterable[str] = MODEL_FILES) -> str:
    """Names and bytes of the folder's files matching `patterns` (not their sizes or mtimes, which a copy changes)."""
    h = hashlib.sha256()
    for path in sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()}):
        with path.open("rb") as f:
            h.update(f"{path.name}\0".encode() + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def build_once(entry: Path, build: Callable[[Path], None], *, complete: str) -> Path:
    """`entry` when it holds the file `complete`; else `build(tmp)` fills a temporary sibling that is renamed into
    place. Two processes building the same entry both succeed: the first rename wins and the other discards its
    copy (same key, same content), so a folder another process may be reading is never replaced."""
    if (entry / complete).is_file():
        log.info("cached at %s", entry)
        return entry
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    except OSError as err:
        raise ModelError(f"{CACHE_ENV}={cache_root()}: cannot write the serving cache there ({err.strerror}); "
                         f"set {CACHE_ENV} to a writable folder") from None
    try:
        build(tmp)
        if not (tmp / complete).is_file():
            raise RuntimeError(f"building {entry.name} wrote no {complete}")
        if entry.exists() and not (entry / complete).is_file():  # not one of ours (nothing here writes in place)
            shutil.rmtree(entry)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / complete).is_file():
                raise
            log.info("%s was built by another process meanwhile; using it", entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
