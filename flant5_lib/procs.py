"""Child processes and local servers: pick a free port, wait until a URL answers, stop a process for good.

One home for these rules: the package (local stand-in, notebook helpers), the tests and the benchmarks all use it.
Only the standard library, so it is importable from the lightest install.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The HTTP status `url` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback URLs we built)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return None


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[Any] | None = None,
    interval_s: float = 0.1,
    on_exit: Callable[[int], str] | None = None,
) -> Any:
    """Poll `predicate` until it returns something truthy; fail fast when `proc` dies, and say what was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            detail = on_exit(proc.returncode) if on_exit else ""
            raise RuntimeError(f"process exited with code {proc.returncode} before {what}{detail}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def wait_for_http(url: str, status: int = 200, *, timeout_s: float = 60.0, proc: subprocess.Popen[Any] | None = None,
                  on_exit: Callable[[int], str] | None = None) -> None:
    """Wait until `url` answers `status` (a server's readiness), failing fast when its process exits."""
    wait_for(lambda: http_status(url) == status, timeout_s=timeout_s, what=f"{url} to answer {status}", proc=proc,
             on_exit=on_exit)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> int | None:
    """Terminate a child we started (SIGTERM: it may drain), then kill it if it does not stop; returns its code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
