"""A stalled PostgreSQL never hangs the service: the database deadline, end to end.

Real gunicorn (two sync workers, production settings) on a private PostgreSQL
cluster this module starts; the cluster is frozen with SIGSTOP (and thawed by
pid), or its tokens table is locked from a second connection. Every database
route must answer the JSON 503 within DB_DEADLINE_SECONDS (plus scheduling
slack on a shared machine), liveness within the deadline plus one second,
readiness 503 meanwhile, and the next requests succeed once the database is
back, with no restart.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from service.db import database_deadline, run_transaction
from service.deadline import DatabaseStalled
from tests.conftest import make_app, reset_database
from tests.helpers import user as new_user
from tests.procs import Gunicorn, ThrowawayPostgres, wait_for
from tests.web import call

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEADLINE = 2.0
SLACK = 0.75  # thread start-up and scheduling on a shared two-core machine
POOL = 10


@dataclass
class Answer:
    name: str
    status: int | None
    body: dict
    seconds: float


def _send(base: str, name: str, method: str, path: str, body=None) -> Answer:
    started = time.monotonic()
    try:
        status, data = call(base, method, path, body, timeout=30)
    except OSError as exc:
        status, data = None, {"error": type(exc).__name__}
    return Answer(name, status, data, time.monotonic() - started)


def _wave(base: str, probes_after: float = 0.3) -> list[Answer]:
    """6 activations and 2 summaries at once, then liveness and readiness probes while they queue."""
    answers: list[Answer] = []
    lock = threading.Lock()

    def run(delay: float, name: str, method: str, path: str, body=None) -> None:
        time.sleep(delay)
        answer = _send(base, name, method, path, body)
        with lock:
            answers.append(answer)

    plan = [(0.0, "activate", "POST", "/api/tokens/activate", {"user_id": new_user()}) for _ in range(6)]
    plan += [(0.0, "summary", "GET", "/api/tokens/summary")] * 2
    plan += [(probes_after, "healthz", "GET", "/healthz"), (probes_after, "live", "GET", "/health/live")]
    plan += [(probes_after + 0.2, "ready", "GET", "/health/ready")]
    threads = [threading.Thread(target=run, args=step) for step in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    return answers


def _probe_stream(base: str, seconds: float) -> list[Answer]:
    """Liveness every 0.25 s for `seconds`, each on a new connection, beside activations."""
    answers: list[Answer] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop(name: str, method: str, path: str, body_of) -> None:
        while time.monotonic() < stop:
            answer = _send(base, name, method, path, body_of())
            with lock:
                answers.append(answer)
            time.sleep(0.25)

    threads = [
        threading.Thread(target=loop, args=("live", "GET", "/health/live", lambda: None)),
        threading.Thread(target=loop, args=("healthz", "GET", "/healthz", lambda: None)),
        threading.Thread(
            target=loop, args=("activate", "POST", "/api/tokens/activate", lambda: {"user_id": new_user()})
        ),
        threading.Thread(target=loop, args=("summary", "GET", "/api/tokens/summary", lambda: None)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def _report(answers: list[Answer]) -> str:
    return "\n".join(
        f"  {a.name:9} {a.status} {a.seconds:6.2f}s {a.body.get('error_code', '')}"
        for a in sorted(answers, key=lambda a: a.name)
    )


def _assert_bounded(answers: list[Answer], *, db_statuses=(503,)) -> None:
    report = _report(answers)
    for a in answers:
        if a.name in ("healthz", "live"):
            assert a.status == 200, report
            assert a.seconds <= DEADLINE + 1, f"liveness took {a.seconds:.2f}s\n{report}"
        elif a.name == "ready":
            assert a.status == 503 and a.body["error_code"] == "SERVICE_UNAVAILABLE", report
            assert a.seconds <= DEADLINE + SLACK, report
        else:
            assert a.status in db_statuses, report
            if a.status == 503:  # the one JSON error shape, never gunicorn's HTML
                assert a.body["error_code"] == "SERVICE_UNAVAILABLE", report
                assert a.body["message"] == "The database is unavailable. Please retry shortly.", report
            assert a.seconds <= DEADLINE + SLACK, f"{a.name} took {a.seconds:.2f}s\n{report}"


def _recovers(base: str, within: float) -> float:
    """Seconds until an activation and readiness succeed again."""
    started = time.monotonic()
    wait_for(
        lambda: call(base, "POST", "/api/tokens/activate", {"user_id": new_user()}, timeout=10)[0] == 200,
        within,
        what="an activation after the database came back",
    )
    wait_for(lambda: call(base, "GET", "/health/ready", timeout=10)[0] == 200, within, what="readiness")
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster():
    pg = ThrowawayPostgres().init().start()
    try:
        reset_database(make_app(pg.url, MAX_ACTIVE_TOKENS=POOL), POOL)
        yield pg
    finally:
        pg.destroy()


def _driver_connection(conn):
    conn.execute(text("SELECT 1"))
    return conn.connection.driver_connection


def _select_one():
    """One transaction with the budget a request has."""
    return run_transaction(_driver_connection, budget_seconds=1.0)


def test_a_connection_past_its_deadline_is_discarded_and_connecting_is_bounded(cluster):
    """In process, one pooled connection: each wait on the frozen cluster ends at the deadline."""
    app = make_app(cluster.url, POOL_SIZE=1, POOL_MAX_OVERFLOW=0)
    with app.app_context():
        pooled = _select_one()
        assert _select_one() is pooled  # reused while healthy
        deadline = database_deadline()
        pids = cluster.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(OperationalError):  # a statement on the pooled connection
                _select_one()
            assert time.monotonic() - started <= 1.0 + SLACK
            assert pooled.closed  # discarded, never handed out again

            started = time.monotonic()
            with pytest.raises(DatabaseStalled):  # the stall is known: no second wait
                _select_one()
            assert time.monotonic() - started < 0.1

            deadline.stalled_until = 0.0  # as when the cool-down ends
            started = time.monotonic()
            with pytest.raises(OperationalError):  # a new connection to the frozen postmaster
                _select_one()
            assert time.monotonic() - started <= 1.0 + SLACK
        finally:
            cluster.thaw(pids)
        deadline.stalled_until = 0.0
        assert _select_one() is not pooled  # back, on a fresh connection


@pytest.fixture(scope="module")
def server(cluster):
    env = {
        "DATABASE_URL": cluster.url,
        "DB_DEADLINE_SECONDS": str(DEADLINE),
        "HEALTH_CHECK_TIMEOUT": str(DEADLINE),
        "MAX_ACTIVE_TOKENS": str(POOL),
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "1",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "LOG_LEVEL": "WARNING",
        "DRAIN_SECONDS": "1",
    }
    gunicorn = Gunicorn(env, workers=2)
    gunicorn.start(wait="/health/ready")
    try:
        yield gunicorn
    finally:
        gunicorn.stop()
    log = "\n".join(gunicorn.log_lines())
    assert "WORKER TIMEOUT" not in log


def _warm(base: str) -> None:
    """Four activations sent at once, twice in a row, and readiness answer 200: every worker serves.

    After a test that froze the database, a worker can still be in its stall
    cool-down, or find a connection that stalled, for a moment after another
    worker has recovered (`_recovers` sees one of them). Requests sent one at a
    time may all reach the same worker; four at once reach both sync workers.
    """

    def activate(_) -> int:
        return call(base, "POST", "/api/tokens/activate", {"user_id": new_user()})[0]

    def serving() -> bool:
        with ThreadPoolExecutor(4) as pool:
            return all(set(pool.map(activate, range(4))) == {200} for _ in range(2))

    wait_for(serving, 15, what="activations at once on every worker")
    assert call(base, "GET", "/health/ready")[0] == 200


def test_a_frozen_database_answers_503_within_the_deadline_and_liveness_holds(cluster, server):
    base = server.url
    _warm(base)
    pids = cluster.freeze()
    try:
        first = _wave(base)
        print("frozen, first wave:\n" + _report(first))
        _assert_bounded(first)
        later = _probe_stream(base, 4.0)  # stall cool-downs end and workers try again: still bounded
        print("frozen, stream:\n" + _report(later))
        _assert_bounded(later)
    finally:
        cluster.thaw(pids)
    took = _recovers(base, within=10)
    print(f"recovered {took:.2f}s after SIGCONT")
    assert took <= DEADLINE + 2


@pytest.mark.parametrize(
    "hold",
    ["LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE", "SELECT id FROM tokens FOR UPDATE"],
    ids=["table_lock", "row_locks"],
)
def test_a_lock_on_the_tokens_table_never_stalls_the_service(cluster, server, hold):
    base = server.url
    _warm(base)
    url = cluster.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as holder:
        holder.execute(hold)
        # reads still work under row locks: a summary may answer 200 or, shed, 503
        statuses = (503,) if hold.startswith("LOCK") else (200, 503)
        answers = _wave(base)
        print(f"{hold}:\n" + _report(answers))
        _assert_bounded(answers, db_statuses=statuses)
        # the server gave up each lock wait itself: no backend is left queued behind the lock
        waiting = holder.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
        assert waiting == 0
        holder.rollback()
    took = _recovers(base, within=10)
    print(f"recovered {took:.2f}s after the lock was released")
