"""Shared pieces of the torture and fault tests: a request log, request streams, database checks.

Requests go through tests.web.call: a new connection each, so a killed or draining
worker shows up as a connection error of exactly the requests it held.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text

from tests.conftest import database
from tests.helpers import user as new_user
from tests.invariants import violations
from tests.procs import Gunicorn, ThrowawayRedis
from tests.web import call

OK_STATUSES = {200, 409}  # 409: release/renew of a lease that ended meanwhile (normal under churn)


@dataclass
class Result:
    op: str
    base: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer
    error: str | None = None  # the exception class of a connection error
    body: dict | None = None
    sent: dict | None = None

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else f"connection error ({self.error})"


class RequestLog:
    """Thread-safe record of every request a test made."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self._lock = threading.Lock()

    def send(self, op: str, base: str, method: str, path: str, body: dict | None = None) -> Result:
        started = time.monotonic()
        try:
            status, data = call(base, method, path, body)
            result = Result(op, base, started, time.monotonic(), status, body=data, sent=body)
        except (OSError, http.client.HTTPException) as exc:
            result = Result(op, base, started, time.monotonic(), None, error=type(exc).__name__, sent=body)
        with self._lock:
            self.results.append(result)
        return result

    def counts(self, results: list[Result] | None = None) -> Counter:
        return Counter((r.op, r.outcome) for r in (self.results if results is None else results))

    def report(self, title: str, results: list[Result] | None = None) -> str:
        results = self.results if results is None else results
        lines = [f"{title}: {len(results)} requests"]
        by_status = Counter(r.outcome for r in results)
        lines.append("  by status: " + ", ".join(f"{k} x{v}" for k, v in sorted(by_status.items())))
        for (op, outcome), n in sorted(self.counts(results).items()):
            lines.append(f"    {op:12} {outcome:40} x{n}")
        return "\n".join(lines)

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status not in OK_STATUSES]


class Stream:
    """A few client threads activating, releasing, renewing and reading until stopped.

    `route()` picks the base URL of each request (a list of instances, a
    load balancer's choice). Each thread keeps its current lease to release or renew.
    """

    def __init__(self, log: RequestLog, route, threads: int = 4, pause: float = 0.01) -> None:
        self.log, self.route, self.pause = log, route, pause
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> Stream:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, index: int) -> None:
        lease: dict | None = None
        step = 0
        while not self._stop.is_set():
            step += 1
            base = self.route()
            if lease and step % 4 == 0:
                op = "release" if step % 8 == 0 else "renew"
                path = f"/api/tokens/{lease['token_id']}/{op}"
                self.log.send(op, base, "POST", path, {k: lease[k] for k in ("user_id", "lease_id")})
                lease = None if op == "release" else lease
            elif step % 5 == 0:
                self.log.send("summary", base, "GET", "/api/tokens/summary")
            else:
                r = self.log.send("activate", base, "POST", "/api/tokens/activate", {"user_id": new_user()})
                if r.status == 200:
                    lease = r.body
            self._stop.wait(self.pause)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_clients(client, count: int, seconds: float, *args) -> None:
    """Run `client(*args, i)` for i in range(count), each in its own thread, until all end
    (each stops at its own deadline, `seconds` from now); fails if one still runs two
    minutes after that."""
    threads = [threading.Thread(target=client, args=(*args, i), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    assert not any(t.is_alive() for t in threads), "clients still running long after the deadline"


@dataclass
class DatabaseCheck:
    """What the database says after the load: invariant violations and lost answers."""

    violations: dict
    lost_activations: list = field(default_factory=list)
    lost_releases: list = field(default_factory=list)
    usages: int = 0
    end_reasons: Counter = field(default_factory=Counter)
    held: int = 0


def check_database(url: str, log: RequestLog) -> DatabaseCheck:
    """Invariants hold; every 200 activation and release the clients saw is in the usage history."""
    with database(url) as conn:
        found = violations(conn)
        rows = conn.execute(
            text("SELECT token_id, user_id, started_at, ended_at, end_reason FROM token_usages")
        ).all()
        held = conn.execute(text("SELECT count(*) FROM tokens WHERE current_user_id IS NOT NULL")).scalar()
    started = {(str(r.token_id), str(r.user_id), r.started_at) for r in rows}
    ended = {(str(r.token_id), str(r.user_id), r.ended_at) for r in rows if r.end_reason == "released"}
    check = DatabaseCheck(found, usages=len(rows), end_reasons=Counter(r.end_reason for r in rows), held=held)
    for r in log.results:
        if r.status != 200:
            continue
        if r.op == "activate":
            key = (r.body["token_id"], r.body["user_id"], parse_time(r.body["activated_at"]))
            if key not in started:
                check.lost_activations.append(r.body)
        elif r.op == "release" and r.sent:
            key = (r.body["token_id"], r.sent["user_id"], parse_time(r.body["released_at"]))
            if key not in ended:
                check.lost_releases.append(r.body)
    return check


def error_lines(*servers) -> list[str]:
    """The ERROR lines (with tracebacks) of the gunicorn logs, for failure messages."""
    lines = []
    for server in servers:
        for line in server.log_lines():
            if '"level": "ERROR"' in line or '"levelname": "ERROR"' in line or "Traceback" in line:
                lines.append(line[:2000])
    return lines


@contextmanager
def two_instances(url: str, **settings: str) -> Iterator[list[Gunicorn]]:
    """Two gunicorn instances of two workers each on the database `url`, with a throwaway
    Redis, the token manager on and rate limits out of the way; `settings` add to or
    override their environment. Stopped (by PID) and their logs removed afterwards."""
    redis = ThrowawayRedis().start()
    env = {
        "APP_ENV": "development",  # admin routes open while no API key exists
        "DATABASE_URL": url,
        "REDIS_URL": redis.url,
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "2",
        "ENABLE_RATE_LIMITING": "true",
        "RATE_LIMIT_PER_MINUTE": "100000000",
        "SWEEPER_ENABLED": "true",
        "LOG_FORMAT": "json",
        "DRAIN_SECONDS": "1",
        "LOG_LEVEL": "ERROR",
    } | settings
    servers: list[Gunicorn] = []
    try:
        for _ in range(2):
            servers.append(Gunicorn(env, workers=2).start())
        yield servers
    finally:
        for server in servers:
            server.signal(signal.SIGTERM)
        for server in servers:
            server.stop()
        redis.stop()
        for server in servers:
            server.log_path.unlink(missing_ok=True)
