"""How quiet the machine was while a benchmark ran: the one rule every benchmark here uses to mark a run noisy.

The 1-minute load average at the end of a run counts the benchmark's own threads (two busy threads on a 2-core box
read as about 2.0), so it cannot tell by itself whether anything else ran. `LoadWatch` therefore also samples, every
second, the CPU time of every process outside the benchmark's own process tree: that is the load of others, in busy
cores. A run is noisy when the load average was above `NOISY_LOAD` at the start (someone else was busy before we
began) or when other processes kept more than `NOISY_OTHERS` cores busy on average while it ran.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

NOISY_LOAD = 1.5  # 1-minute load average at the start
NOISY_OTHERS = 0.25  # mean cores kept busy by other processes during the run


def _own_tree() -> set[int]:
    me = psutil.Process()
    try:
        return {me.pid, *(p.pid for p in me.children(recursive=True))}
    except psutil.Error:
        return {me.pid}


class LoadWatch:
    """Context manager: `with LoadWatch() as watch: ...`, then `watch.report()` for the table and the JSON line."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.load_start = self.load_end = 0.0
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        last_seen: dict[int, float] = {}
        last_t = time.monotonic()
        while not self._stop.wait(self.interval_s):
            own = _own_tree()
            busy = 0.0
            seen: dict[int, float] = {}
            for p in psutil.process_iter(["pid", "cpu_times"]):
                pid, times = p.info["pid"], p.info["cpu_times"]
                if pid in own or times is None:
                    continue
                seen[pid] = times.user + times.system
                if pid in last_seen:  # new processes count from their second sample (their past is not ours to see)
                    busy += max(0.0, seen[pid] - last_seen[pid])
            now = time.monotonic()
            if last_seen:
                self.samples.append(busy / (now - last_t))
            last_seen, last_t = seen, now

    def __enter__(self) -> LoadWatch:
        self.load_start = os.getloadavg()[0]
        self._thread = threading.Thread(target=self._sample, daemon=True, name="load-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.load_end = os.getloadavg()[0]

    @property
    def others_cores(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0

    @property
    def noisy(self) -> bool:
        return self.load_start > NOISY_LOAD or self.others_cores > NOISY_OTHERS

    def line(self) -> str:
        verdict = "NOISY: quote no figure from this run" if self.noisy else "quiet"
        return (f"load average {self.load_start:.2f} at start, {self.load_end:.2f} at end (counts this benchmark's own "
                f"threads); other processes kept {self.others_cores:.2f} cores busy on average: {verdict}")

    def report(self) -> dict[str, Any]:
        return {"load_avg_start": round(self.load_start, 2), "load_avg_end": round(self.load_end, 2),
                "others_busy_cores": round(self.others_cores, 2), "noisy": self.noisy}
