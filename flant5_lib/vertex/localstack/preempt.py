"""Spot preemption, as Vertex AI does it to a running replica: SIGTERM (the preemption notice), a grace period
(Compute Engine gives 30 s), SIGKILL if the process is still there, then the replica restarted with the same
command and environment (the same AIP_CHECKPOINT_DIR), while the job stays RUNNING.

Only jobs with scheduling strategy SPOT are preempted (`PreemptPlan`, from `flant5 vertex local-stack
--preempt-after S --preempt-times N`). Each restart is written to the job's log, as Vertex writes it to the job's
logs, and kept in `Backend.restarts[job id]` (`GET /_local/restarts`). A restarted replica that exits non-zero
fails the job with Vertex's "replica exited with a non-zero status" error, as a permanent error does there.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NOTICE_WINDOW_S = 30.0  # Compute Engine: preemption notice to hard stop


@dataclass(frozen=True)
class PreemptPlan:
    """Preempt each Spot replica `after_s` seconds after it starts, `times` times in all (per job).

    `start_on`: start the clock only once this text appears in the replica's own output (e.g. "'loss'", the first
    logged training step), so a test preempts a replica that is training, however slow the machine is."""

    after_s: float
    times: int = 1
    grace_s: float = NOTICE_WINDOW_S
    start_on: str | None = None


def strategy_name(inputs: dict[str, Any]) -> str:
    """The job's scheduling strategy as its enum name: the SDK sends a number inside Struct inputs (4.0) and the
    name or the number (enum-encoding=int) in a CustomJob's jobSpec."""
    sched = inputs.get("scheduling") or {}
    value = sched.get("strategy")
    if value in (None, "", 0, 0.0):
        return "STANDARD"
    if isinstance(value, (int, float)) or str(value).replace(".", "", 1).isdigit():
        from google.cloud.aiplatform_v1.types import Scheduling

        try:
            return Scheduling.Strategy(int(float(value))).name
        except ValueError:
            return str(value)
    return str(value).upper()


def _trigger(proc: subprocess.Popen[bytes], log_path: Path, offset: int, plan: PreemptPlan,
             cancelled: Callable[[], bool]) -> bool:
    """Wait until it is time to preempt (True), or the replica ended or the job was cancelled first (False)."""
    clock = time.monotonic() if plan.start_on is None else None
    while proc.poll() is None and not cancelled():
        if clock is None:
            try:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    if plan.start_on.encode() in f.read():  # type: ignore[union-attr]
                        clock = time.monotonic()
            except OSError:
                pass
        if clock is not None and time.monotonic() - clock >= plan.after_s:
            return True
        time.sleep(0.1)
    return False


def preempt(proc: subprocess.Popen[bytes], grace_s: float) -> dict[str, Any]:
    """SIGTERM, wait up to `grace_s`, SIGKILL: what the replica's process sees when its Spot VM is reclaimed."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    killed = False
    try:
        code = proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        killed = True
    return {"exit_code": code, "stopped_after_s": round(time.monotonic() - started, 2), "sigkill": killed}


def run_replica(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, plan: PreemptPlan | None, *,
                on_start: Callable[[subprocess.Popen[bytes]], None], cancelled: Callable[[], bool],
                on_restart: Callable[[dict[str, Any]], None], name: str = "workerpool0-0") -> int:
    """Run one replica (`name`: workerpool0-0 unless told) to its end, preempting and restarting it as `plan` says;
    returns its last exit code."""
    log_path.write_bytes(b"")
    restarts = 0
    while True:
        offset = log_path.stat().st_size
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        on_start(proc)
        if plan is None or restarts >= plan.times or not _trigger(proc, log_path, offset, plan, cancelled):
            return proc.wait()
        row = {"restart": restarts + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **preempt(proc, plan.grace_s)}
        restarts += 1
        with open(log_path, "ab") as out:
            out.write((f"\n[local stand-in] replica {name} was preempted (Spot): SIGTERM, exit "
                       f"{row['exit_code']} after {row['stopped_after_s']} s{' (SIGKILL after the grace period)' if row['sigkill'] else ''}; "
                       f"restarting it with the same environment (restart {restarts} of {plan.times})\n").encode())
        log.info("replica preempted and restarted: %s", row)
        on_restart(row)
        if cancelled():
            return row["exit_code"]
        if row["exit_code"] == 0:  # it finished inside the grace period: nothing left to restart
            return 0
