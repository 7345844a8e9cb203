"""Where the CPU of a wrk run goes: CPU microseconds per request of each process group.

    .venv/bin/python bench/cpu_share.py http://127.0.0.1:8000/api/tokens/activate activate.lua

Reads utime + stime of every process from /proc before and after
`wrk -t1 -c16 -d8s`, groups them (gunicorn, postgres, redis, wrk, other)
and divides by the requests served; "idle" is what was left of the cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
GROUPS = ("gunicorn", "postgres", "redis", "wrk")


def cpu_seconds_by_group() -> dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = next((g for g in GROUPS if g in cmd), "other")
        used[group] = used.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def main(url: str, script: str | None = None, seconds: int = 8) -> None:
    before, started = cpu_seconds_by_group(), time.monotonic()
    cmd = ["wrk", "-t1", "-c16", f"-d{seconds}s", url] + (["-s", str(BENCH / script)] if script else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after, elapsed = cpu_seconds_by_group(), time.monotonic() - started
    rps = float(next(line for line in out.splitlines() if "Requests/sec" in line).split()[1])
    requests = rps * seconds
    spent = {g: after.get(g, 0.0) - before.get(g, 0.0) for g in (*GROUPS, "other")}
    idle = (os.cpu_count() or 1) * elapsed - sum(spent.values())
    parts = ", ".join(f"{g} {1e6 * s / requests:.0f}" for g, s in spent.items())
    print(f"{url}: {rps:.0f} req/s; CPU us per request: {parts}; idle {1e6 * idle / requests:.0f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
