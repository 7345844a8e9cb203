"""SIGTERM to one of two gunicorn instances behind nginx during a stream of activations.

gunicorn.conf.py drains: after SIGTERM each worker keeps serving DRAIN_SECONDS (readiness failing),
then exits; once nothing listens on its port nginx gets "connection refused", which is an `error`
in `proxy_next_upstream` and is retried on the other instance even for a POST (nothing was sent).
"""

from __future__ import annotations

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

ACTIVATE = "/api/tokens/activate"
CLIENTS = 4
AFTER_EXIT_SECONDS = 1.5


@dataclass
class Sent:
    started: float
    finished: float
    user: str
    status: int  # 0: no HTTP answer at all
    token_id: str | None = None
    detail: str = ""


def _stream(port: int, stop: threading.Event, out: list[Sent]) -> None:
    while not stop.is_set():
        user = str(uuid.uuid4())
        started = time.monotonic()
        try:
            r = request(port, "POST", ACTIVATE, body={"user_id": user}, timeout=20)
        except OSError as exc:
            out.append(Sent(started, time.monotonic(), user, 0, detail=repr(exc)))
            continue
        token = r.json().get("token_id") if r.status == 200 else None
        out.append(
            Sent(started, time.monotonic(), user, r.status, token, "" if token else r.body[:200].decode())
        )


def test_sigterm_to_one_instance_loses_no_accepted_activation_and_nginx_routes_to_the_other(stack):
    pool = 10
    s = stack(pool=pool)  # DRAIN_SECONDS=2, GUNICORN_GRACEFUL_TIMEOUT=10 (tests/e2e/stack.py)
    victim, survivor = s.gunicorns
    stop = threading.Event()
    results: list[list[Sent]] = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_stream, args=(s.nginx.port, stop, out)) for out in results]
    for t in threads:
        t.start()
    try:  # both instances take part before the stop
        wait_for(lambda: sum(len(out) for out in results) >= 40, 20, what="40 activations")
        term_at = time.monotonic()
        victim.signal(signal.SIGTERM)
        returncode = victim.proc.wait(timeout=20)
        exit_at = time.monotonic()
        time.sleep(AFTER_EXIT_SECONDS)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    sent = sorted((x for out in results for x in out), key=lambda x: x.started)

    before = [x for x in sent if x.finished < term_at]
    draining = [x for x in sent if x.started >= term_at and x.finished < exit_at]
    after = [x for x in sent if x.started >= exit_at]
    failed = [x for x in sent if x.status != 200]
    statuses: dict[int, int] = {}
    for x in failed:
        statuses[x.status] = statuses.get(x.status, 0) + 1
    victim_lines = [r for r in access_lines(victim) if r["path"] == ACTIVATE]
    survivor_lines = [r for r in access_lines(survivor) if r["path"] == ACTIVATE]
    retried = [e for e in s.nginx.access_log() if e["uri"] == ACTIVATE and "," in e["upstream_addr"]]
    summary = (
        f"failover: {len(sent)} activations ({len(before)} before SIGTERM, {len(draining)} while draining"
        f" {exit_at - term_at:.2f}s, {len(after)} after exit); failures {len(failed)} {statuses};"
        f" served by victim {len(victim_lines)}, survivor {len(survivor_lines)};"
        f" retried by nginx on the other instance {len(retried)}"
    )
    print("\n" + summary)
    for x in failed[:5]:
        print(f"  failed: {x.status} {x.detail}")

    # the victim drained and exited cleanly, on time (its master's own lines are not JSON)
    master_log = "\n".join(line for line in victim.log_lines() if not line.startswith("{"))
    assert returncode == 0, master_log[-3000:]
    assert 1.5 <= exit_at - term_at < 10, summary
    assert "WORKER TIMEOUT" not in master_log and "SIGKILL" not in master_log
    assert "Traceback" not in master_log, master_log[-3000:]

    # traffic flowed all along, to both instances before and to the survivor after
    assert before and draining and after, summary
    assert victim_lines and survivor_lines, summary
    assert all(x.status == 200 for x in after), [x for x in after if x.status != 200][:5]

    # every activation answered 200 has its usage row committed; the pool invariants hold
    ok = [x for x in sent if x.status == 200]
    with database(s.database_url) as conn:
        rows = conn.execute(text("SELECT user_id::text, token_id::text FROM token_usages")).fetchall()
        assert_invariants(conn, pool)
    recorded = {(u, t) for u, t in rows}
    assert [x for x in ok if (x.user, x.token_id) not in recorded] == []

    # no failure at all: the drain plus nginx's retry of refused connections hide the stop
    assert failed == [], summary
    # each request reached exactly one instance once, and left exactly one lease
    assert len(victim_lines) + len(survivor_lines) == len(sent), summary
    assert len(rows) == len(ok), summary
