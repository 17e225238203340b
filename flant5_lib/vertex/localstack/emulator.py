"""Start gcp-storage-emulator on 127.0.0.1 in a background thread (tests, notebooks, local-stack)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flant5_lib.procs import free_port

log = logging.getLogger(__name__)


@dataclass
class GcsEmulator:
    """A running emulator; `url` is what STORAGE_EMULATOR_HOST must be set to."""

    url: str
    port: int
    server: Any

    def stop(self) -> None:
        self.server.stop()

    def wipe(self, keep_buckets: bool = True) -> None:
        self.server.wipe(keep_buckets=keep_buckets)


def start_gcs_emulator(data_dir: str | Path | None = None, port: int | None = None) -> GcsEmulator:
    """Start the emulator; objects live in memory, or on disk under `data_dir` when given."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)  # one log line per request otherwise
    port = port or free_port()
    if data_dir is not None:
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = create_server("127.0.0.1", port, in_memory=False, data_dir=str(data_dir))
    else:
        server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    url = f"http://127.0.0.1:{port}"
    log.info("GCS emulator listening on %s", url)
    return GcsEmulator(url=url, port=port, server=server)
