"""How long a lease change takes to reach an event-stream client of another instance.

Two instances of the service on one fresh database (the bench's production
settings; `--worker default`: gunicorn.conf.py's default worker, which holds
each stream open in a thread of its own; `--worker sync`: plain sync
workers, where a stream is a series of short answers). One client reads
instance B's stream as a browser's EventSource does (read what comes; after
an answer that ended, wait its `retry:` and ask again with `Last-Event-ID`);
activations go to
instance A at random moments (`--gap` seconds apart at most, uniform). For
each, the time from A's answer to the client holding the `leased` event.
`--crowd N` adds N more such clients on B (bench/run.py's `start_streams`),
so that B's workers answer many streams a second, as with target 6's 100
clients; `--load R` sends R more activations a second to A
meanwhile (bench/loadgen.py), so that its publisher numbers at its full pace.

    .venv/bin/python bench/stream_latency.py [--samples 120] [--gap 1.0] [--workers 2] [--crowd 0]
        [--load 0] [--worker default|sync]

Prints the median, 99th percentile and maximum in seconds and one BENCH_JSON
line. Stops what it started (by PID) and drops its database.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from loadgen import percentile, run_fixed_rate
from run import (
    VENV_BIN,
    Target,
    admin_sql,
    finish_streams,
    free_port,
    prepare_database,
    service_env,
    start_streams,
)

from tests.helpers import sse_messages


class Reader(threading.Thread):
    """An EventSource-like client: notes when each `leased` event's user first arrived. It reads
    each answer as it comes (a held stream stays open), and after an answer that ended, waits
    its `retry:` and asks again with the `Last-Event-ID` it reached."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.seen, self.requests = url, {}, 0
        self.last_event_id: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        retry_ms = 1000  # EventSource's own default
        while not self.done.is_set():
            headers = {} if self.last_event_id is None else {"Last-Event-ID": self.last_event_id}
            request = urllib.request.Request(self.url, headers=headers)
            with urllib.request.urlopen(request, timeout=30) as answer:
                self.requests += 1
                lines: list[str] = []
                for raw in answer:  # line by line, as the server writes them
                    if self.done.is_set():
                        return
                    line = raw.decode()
                    if line.strip("\r\n"):
                        lines.append(line)
                        continue
                    arrived = time.monotonic()
                    for message in sse_messages("".join(lines)):
                        retry_ms = int(message.get("retry", retry_ms))
                        self.last_event_id = message.get("id", self.last_event_id)
                        if message.get("event") == "leased":
                            self.seen.setdefault(json.loads(message["data"])["user_id"], arrived)
                    lines = []
            self.done.wait(retry_ms / 1000)


def activate(base: str) -> tuple[str, float]:
    """A new user's activation on `base`; (its user_id, when its answer arrived)."""
    user = str(uuid.uuid4())
    request = urllib.request.Request(
        base + "/api/tokens/activate",
        data=json.dumps({"user_id": user}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    return user, time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--gap", type=float, default=1.0, help="most seconds between two activations")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    parser.add_argument("--crowd", type=int, default=0, help="more stream clients on B")
    parser.add_argument(
        "--worker",
        choices=("default", "sync"),
        default="default",
        help="gunicorn.conf.py's default (held streams) or plain sync workers (short answers)",
    )
    parser.add_argument("--load", type=float, default=0, help="more activations a second on A")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tokenpool-stream-latency-"))
    name = f"tokenpool_stream_latency_{int(time.time())}"
    url = prepare_database(name, 100, work)
    targets = []
    try:
        for label in ("a", "b"):
            port = free_port()
            (work / label).mkdir()
            env = service_env(url, port, work / label) | {"WEB_CONCURRENCY": str(args.workers)}
            if args.worker == "sync":
                env |= {"GUNICORN_WORKER_CLASS": "sync", "EVENT_STREAM_SECONDS": "0"}
            targets.append(
                Target(
                    label,
                    [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                    env,
                    port,
                    "/health/ready",
                    work,
                )
            )
        for target in targets:
            target.wait_ready()
        seconds = args.samples * args.gap / 2 + 5
        held = args.worker == "default"
        crowd = start_streams(targets[1].base, seconds, args.crowd, held=held) if args.crowd else None
        reader = Reader(targets[1].base + "/api/events/stream")
        reader.start()
        load = threading.Thread(
            target=run_fixed_rate,
            args=(targets[0].base + "/api/tokens/activate",),
            kwargs={"rate": args.load, "duration": seconds, "activate": True},
            daemon=True,
        )
        if args.load:
            load.start()
        answered = []
        for _ in range(args.samples):
            time.sleep(random.uniform(0, args.gap))
            answered.append(activate(targets[0].base))
        time.sleep(3)  # the last ones arrive
        reader.done.set()
        crowd_failed = 0 if crowd is None else finish_streams(crowd)["failed"]
        if args.load:
            load.join(timeout=seconds + 30)
    finally:
        for target in targets:
            target.stop()
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    latencies = sorted(reader.seen[user] - at for user, at in answered if user in reader.seen)
    result = {
        "samples": args.samples,
        "received": len(latencies),
        "stream_requests": reader.requests,
        "crowd_failed": crowd_failed,
        "median_s": round(percentile(latencies, 50), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "max_s": round(latencies[-1], 3),
        "over_1s": sum(1 for s in latencies if s > 1.0),
    }
    print(
        f"{result['received']}/{args.samples} events received; median {result['median_s']} s,"
        f" p99 {result['p99_s']} s, max {result['max_s']} s, over 1 s: {result['over_1s']}"
    )
    print("BENCH_JSON " + json.dumps(result))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if len(latencies) == args.samples else 1


if __name__ == "__main__":
    sys.exit(main())
