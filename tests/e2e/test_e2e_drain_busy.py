"""SIGTERM to one of two gunicorn instances behind nginx while all its workers are busy.

Both workers of the victim are held by the sleep hook when it gets SIGTERM, so
connections pile up in its accept queue behind them. Through nginx a stream of
activate -> release -> summary cycles runs (release is a POST nginx never
replays once sent); beside it, clients connect to the victim directly, so a
connection that is let in and then reset is seen as such and not hidden by
nginx's retry. Every request must be served, or refused when connecting.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from tests.conftest import database
from tests.e2e.stack import access_lines
from tests.invariants import assert_invariants
from tests.procs import wait_for
from tests.web import request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENTS = 8
DIRECT_CLIENTS = 3
SLEEP_MS = 4000
DRAIN_SECONDS = 1
ENV = {
    "APP_ENV": "development",  # the sleep hook is refused in production
    "ENABLE_TEST_HOOKS": "true",
    "DRAIN_SECONDS": str(DRAIN_SECONDS),
    "GUNICORN_GRACEFUL_TIMEOUT": "15",
    "DB_STATEMENT_TIMEOUT_MS": "20000",
    "DB_DEADLINE_SECONDS": "20",
}


@dataclass
class Sent:
    kind: str
    started: float
    status: int  # 0: no HTTP answer
    user: str = ""
    token_id: str | None = None
    detail: str = ""


def _cycle(port: int, stop: threading.Event, out: list[Sent]) -> None:
    """activate -> release -> summary through nginx, each on a new connection, until stopped."""

    def send(kind, method, path, body=None):
        started = time.monotonic()
        try:
            r = request(port, method, path, body=body, timeout=30)
        except OSError as exc:
            out.append(Sent(kind, started, 0, detail=repr(exc)))
            return None
        out.append(Sent(kind, started, r.status, detail="" if r.status == 200 else r.body[:200].decode()))
        return r

    while not stop.is_set():
        user = str(uuid.uuid4())
        r = send("activate", "POST", "/api/tokens/activate", {"user_id": user})
        if r is None or r.status != 200:
            continue
        token, lease = r.json()["token_id"], r.json().get("lease_id")
        if lease is None:  # a repeated activation: the holder would have lost its proof
            out[-1].status, out[-1].detail = 0, "activation answered without its lease_id"
            continue
        out[-1].user, out[-1].token_id = user, token
        r = send("release", "POST", f"/api/tokens/{token}/release", {"user_id": user, "lease_id": lease})
        if r is not None:
            out[-1].user, out[-1].token_id = user, token
        send("summary", "GET", "/api/tokens/summary")


def _direct(port: int, stop: threading.Event, out: list[Sent]) -> None:
    """GETs straight to the victim until it refuses: a connection let in must be answered."""
    while not stop.is_set():
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            try:
                conn.connect()
            except ConnectionRefusedError:
                out.append(Sent("refused", started, 0))
                return
            try:
                conn.request("GET", "/api/tokens/summary")
                resp = conn.getresponse()
                resp.read()
                out.append(Sent("direct", started, resp.status))
            except OSError as exc:  # let in, then reset or dropped
                out.append(Sent("direct", started, 0, detail=repr(exc)))
        finally:
            conn.close()
        time.sleep(0.05)


def _sleepers(database_url: str) -> int:
    with database(database_url) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state='active'"
        return conn.scalar(text(query))


def test_sigterm_with_busy_workers_serves_or_refuses_every_connection(stack):
    pool = 20
    s = stack(pool=pool, env=ENV)
    victim, survivor = s.gunicorns
    stop = threading.Event()
    streams: list[list[Sent]] = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_cycle, args=(s.nginx.port, stop, out)) for out in streams]
    for t in threads:
        t.start()
    sleeps: list = []
    direct: list[list[Sent]] = [[] for _ in range(DIRECT_CLIENTS)]
    hold: list[threading.Thread] = []
    direct_threads: list[threading.Thread] = []
    try:
        wait_for(lambda: sum(len(out) for out in streams) >= 60, 30, what="60 requests through nginx")
        hold = [  # one per worker of the victim
            threading.Thread(
                target=lambda: sleeps.append(
                    request(victim.port, "GET", f"/api/monitoring/test/sleep?ms={SLEEP_MS}", timeout=30)
                )
            )
            for _ in range(2)
        ]
        for t in hold:
            t.start()
        wait_for(lambda: _sleepers(s.database_url) >= 2, 10, what="both workers of the victim asleep")
        term_at = time.monotonic()
        victim.signal(signal.SIGTERM)
        direct_threads = [threading.Thread(target=_direct, args=(victim.port, stop, out)) for out in direct]
        for t in direct_threads:
            t.start()
        returncode = victim.proc.wait(timeout=30)
        exit_at = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads + hold + direct_threads:
            t.join(40)
    sent = [x for out in streams for x in out]
    probes = [x for out in direct for x in out]
    failed = [x for x in sent if x.status != 200]
    lost = [x for x in probes if x.kind == "direct" and x.status != 200]
    during = [x for x in sent if term_at <= x.started < exit_at]
    victim_after_term = [
        r for r in access_lines(victim) if r.get("path", "").startswith("/api/tokens") and r["status"] == 200
    ]
    summary = (
        f"busy drain: {len(sent)} requests through nginx ({len(during)} while the victim drained"
        f" {exit_at - term_at:.2f}s), failed {len(failed)}; direct to the victim: {len(probes)}"
        f" ({sum(x.kind == 'refused' for x in probes)} refused at connect, {len(lost)} let in and lost);"
        f" sleeps answered {[r.status for r in sleeps]}"
    )
    print("\n" + summary)
    for x in (failed + lost)[:5]:
        print(f"  failed: {x.kind} {x.status} {x.detail}")

    master_log = "\n".join(line for line in victim.log_lines() if not line.startswith("{"))
    assert returncode == 0, master_log[-3000:]
    assert "SIGKILL" not in master_log and "WORKER TIMEOUT" not in master_log, master_log[-3000:]
    assert [r.status for r in sleeps] == [200, 200], summary  # in-flight work finished
    assert during and victim_after_term, summary

    # nothing let in was dropped: every request answered, through nginx and directly
    assert failed == [], summary
    assert lost == [], summary

    # every answered activation and release is in the database; the pool invariants hold
    with database(s.database_url) as conn:
        query = "SELECT user_id::text, token_id::text, end_reason FROM token_usages"
        rows = conn.execute(text(query)).fetchall()
        assert_invariants(conn, pool)
    usages = {(u, t): reason for u, t, reason in rows}
    for x in sent:
        if x.kind == "activate":
            assert (x.user, x.token_id) in usages, x
        if x.kind == "release":
            assert usages.get((x.user, x.token_id)) == "released", x
