"""Where target 4's stalls come from: open-loop activations with the server's and the host's view.

Like one round of target 4 (a fresh database of 100 tokens, the bench's
production settings, a 10 s `wrk` peak, then open-loop activations at half
that peak), and beside it: `vmstat` steal every second, a heartbeat process
that notes every pause over 20 ms of its 1 ms sleeps, and the service's JSON
access lines (when each request started in Flask and how long it took). For
each stalled window (answers over `--slow-ms`, grouped) it prints, per 50 ms,
the requests scheduled, started by the server, finished by the server and
received by the client, and the heartbeat's pauses: requests that wait while
the server starts fewer than arrive, with short server durations and no
heartbeat pause, waited in the listen queue for a worker.

    .venv/bin/python bench/stalls.py [--seconds 30] [--rate 0 (half the peak)] [--slow-ms 40]

Stops what it started (by PID) and drops its database.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from loadgen import _drive, percentile, request_factory
from run import (
    VENV_BIN,
    Target,
    admin_sql,
    free_port,
    prepare_database,
    run_wrk,
    service_env,
)

BUCKET = 0.05
HEARTBEAT = """
import sys, time
end, out, last = time.time() + float(sys.argv[1]), open(sys.argv[2], "w"), time.time()
while last < end:
    time.sleep(0.001)
    now = time.time()
    if now - last > 0.02:
        out.write(f"{last:.4f} {(now - last) * 1000:.1f}\\n")
        out.flush()
    last = now
"""


def server_requests(log: Path) -> list[tuple[float, float, float]]:
    """(start, end, duration ms) of each activation, from the service's access lines."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"logger":"tokenpool.access"' not in line or "/api/tokens/activate" not in line:
            continue
        record = json.loads(line)
        end = datetime.fromisoformat(record["timestamp"]).timestamp()
        found.append((end - record["duration_ms"] / 1000, end, record["duration_ms"]))
    return found


def windows(answers: list[tuple[float, float]], slow_ms: float) -> list[list[float]]:
    """[first scheduled, last received, how many] of each run of slow answers."""
    found: list[list[float]] = []
    for scheduled, received in sorted(a for a in answers if (a[1] - a[0]) * 1000 > slow_ms):
        if found and scheduled <= found[-1][1] + BUCKET:
            found[-1][1] = max(found[-1][1], received)
            found[-1][2] += 1
        else:
            found.append([scheduled, received, 1])
    return found


def report(answers, served, pauses, stalled) -> None:
    for first, last, count in stalled:
        if count < 5:
            continue
        start, end = first - 0.3, last + 0.2
        inside = [d for s, _, d in served if start <= s < end]
        span = (last - first) * 1000
        print(f"\nstall at +{first - answers[0][0]:.3f} s: {count} slow answers over {span:.0f} ms")
        print(f"  server durations there: max {max(inside, default=0):.1f} ms")
        for at, ms in pauses:
            if start <= at <= end:
                print(f"  heartbeat paused {ms:.0f} ms at +{(at - start) * 1000:.0f} ms")
        columns = int((end - start) / BUCKET) + 1
        rows = {
            "scheduled": [s for s, _ in answers],
            "srv start": [s for s, _, _ in served],
            "srv end": [e for _, e, _ in served],
            "received": [r for _, r in answers],
        }
        print("  per 50 ms " + " ".join(f"{i * 50:5d}" for i in range(columns)))
        for name, times in rows.items():
            counts = collections.Counter(int((t - start) / BUCKET) for t in times if start <= t < end)
            print(f"  {name:9s} " + " ".join(f"{counts.get(i, 0):5d}" for i in range(columns)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s (0: half the measured peak)")
    parser.add_argument("--slow-ms", type=float, default=40.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tokenpool-stalls-"))
    name = f"tokenpool_stalls_{int(time.time())}"
    url = prepare_database(name, 100, work)
    port = free_port()
    (work / "prom").mkdir()
    target = Target(
        "service",
        [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        service_env(url, port, work / "prom"),
        port,
        "/health/ready",
        work,
    )
    try:
        target.wait_ready()
        url = target.base + "/api/tokens/activate"
        measured = run_wrk(url, "activate.lua", duration=10, connections=16, threads=1)["rps"]
        rate = args.rate or measured / 2
        print(f"peak {measured:.0f} req/s; open loop at {rate:.0f}/s for {args.seconds:.0f} s")
        vmstat = subprocess.Popen(
            ["vmstat", "1", str(int(args.seconds) + 1)], stdout=subprocess.PIPE, text=True
        )
        beats = work / "heartbeat.txt"
        heartbeat = subprocess.Popen([sys.executable, "-c", HEARTBEAT, str(args.seconds + 2), str(beats)])
        host, port_, make = request_factory(url, activate=True)
        wall, perf = time.time(), time.perf_counter()
        _start, out, dropped = _drive(host, port_, make, rate, args.seconds, 512, 10)
        rows = [line.split() for line in vmstat.communicate()[0].splitlines()]
        steal = [int(row[16]) for row in rows[2:] if row and row[0].isdigit()]  # headers repeat
        heartbeat.wait()
    finally:
        target.stop()
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    answers = [(wall + s - perf, wall + r - perf) for s, _sent, r, status in out if status == 200]
    latencies = sorted((r - s) * 1000 for s, r in answers)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"answers {len(answers)}, dropped {dropped}; p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"steal % per second: {steal}")
    pauses = [tuple(map(float, line.split())) for line in beats.read_text().splitlines()]
    report(answers, server_requests(target.log_path), pauses, windows(answers, args.slow_ms))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
