"""Run a command beside one CPU-burning process per core, to prove the suite does not depend on the machine's speed.

    .venv/bin/python -m tests.helpers.burn ./workbench.sh test          # the whole suite, on a loaded machine
    .venv/bin/python -m tests.helpers.burn --burners 0 ./workbench.sh test   # the same, idle, for the comparison

Prints the command's wall time and the load average before and after, and exits with the command's exit code.
The burners are plain busy loops at normal priority (what a neighbour's build or a noisy CI runner does).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time


def _burn() -> None:
    x = 0
    while True:  # stopped by terminate()
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.burn", description=__doc__.splitlines()[0])
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run beside them")
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("name a command, e.g. ./workbench.sh test")
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    load_before = os.getloadavg()
    for p in burners:
        p.start()
    started = time.monotonic()
    try:
        rc = subprocess.call(args.command)
    finally:
        for p in burners:
            p.terminate()
        for p in burners:
            p.join()
    seconds = time.monotonic() - started
    load_after = os.getloadavg()
    print(f"burn: {' '.join(args.command)} exited {rc} after {seconds:.0f} s beside {args.burners} burner(s); "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
