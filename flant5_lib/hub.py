"""Fail in seconds when a Hugging Face hub id cannot be fetched: offline mode, no network, or no DNS.

Offline, `datasets` and `transformers` retry the hub for about a minute (and log each retry twice) before they give
up. Asking first (is the repository in the local cache? is the hub allowed and reachable?) turns that into one line
in well under a second. A cached repository passes even offline, as the libraries themselves would load it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from flant5_lib.errors import DataError, ModelError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_ID_RE = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
PROBE_TIMEOUT_S = 3.0


def looks_like_hub_id(spec: str) -> bool:
    """'owner/name' (or a bare legacy name like 't5-small') that is not a local path or a URI."""
    return bool(HUB_ID_RE.match(spec)) and not spec.startswith((".", "~")) and not Path(os.path.expanduser(spec)).exists()


def offline_variable() -> str | None:
    """The environment variable that puts the Hugging Face libraries offline, when one is set to a true value."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def is_cached(repo_id: str, repo_type: str = "model") -> bool:
    """True when a snapshot of the repository is in the local hub cache (or, for datasets, the datasets cache)."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    if hub.is_dir() and any(hub.iterdir()):
        return True
    if repo_type == "dataset":
        cache = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
        return any(cache.glob(f"{repo_id.replace('/', '___')}*"))
    return False


def unreachable_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (no DNS, refused, timed out), or None when a TCP connection opens.

    The probe runs in a daemon thread so a hanging DNS lookup also ends at `timeout_s`.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(None)
        except OSError as err:
            result.append(f"{host}: {type(err).__name__}: {err.strerror or err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return result[0] if result else f"{host}: no answer within {timeout_s:.0f} s"


def require_hub(repo_id: str, *, repo_type: str = "model", field: str = "model_name", hint: str = "") -> None:
    """Raise one line (DataError for datasets, ModelError otherwise) when `repo_id` is neither cached nor fetchable.

    `field` and `hint` name what the user should change in the context of the caller (a params field, a CLI flag).
    """
    if is_cached(repo_id, repo_type):
        return
    variable = offline_variable()
    reason = f"{variable}={os.environ[variable]} is set" if variable else unreachable_reason()
    if reason is None:
        return
    error = DataError if repo_type == "dataset" else ModelError
    fix = hint or f"set {field} to a local folder"
    raise error(f"{field}: {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
                f"({reason}); {fix}")
