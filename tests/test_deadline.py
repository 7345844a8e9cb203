"""The database deadline's parts, without a stalled server (see tests/resilience/test_db_deadline.py)."""

from __future__ import annotations

import time
import uuid

import pytest
from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.config import ConfigError
from service.db import database_deadline, run_transaction
from service.deadline import (
    BoundedQueuePool,
    DatabaseStalled,
    Deadline,
    DeadlineExceeded,
    remaining,
)
from tests.conftest import make_app, reset_database
from tests.helpers import frozen_deadline_clock


class FakeDbapiConnection:
    """What a pool needs of a DBAPI connection."""

    server_timeout_ms = None

    def rollback(self):
        pass

    def close(self):
        pass


class Recorder:
    """Stands in for the connection `fit_server_timeouts` sends its SET through."""

    def __init__(self):
        self.sent = []

    def exec_driver_sql(self, sql, params):
        self.sent.append(params)


def test_a_pool_checkout_waits_no_longer_than_the_budget():
    """SQLAlchemy's QueuePool reads `_timeout` when it waits: this fails if that changes."""
    pool = BoundedQueuePool(FakeDbapiConnection, pool_size=1, max_overflow=0, timeout=30)
    held = pool.connect()
    deadline = Deadline(0.5, 0)
    try:
        with deadline.budget(0.5):
            started = time.perf_counter()
            with pytest.raises(PoolTimeoutError):
                pool.connect()
            assert time.perf_counter() - started < 1.0
        assert pool.timeout() == 30  # without a budget: the configured wait
    finally:
        held.close()


def test_the_server_timeouts_are_set_only_when_the_session_ones_do_not_fit():
    deadline = Deadline(3.0, 5000)
    assert deadline.margin == 0.25 and deadline.session_timeout_ms() == 2750
    dbapi = FakeDbapiConnection()
    dbapi.server_timeout_ms = 2750
    conn = Recorder()
    with deadline.budget(3.0):  # a full budget: the session's timeouts fit, nothing is sent
        deadline.fit_server_timeouts(conn, dbapi, local=False)
    assert conn.sent == []
    with frozen_deadline_clock(), deadline.budget(1.0):  # a budget partly spent: just under what is left
        deadline.fit_server_timeouts(conn, dbapi, local=True)
    assert conn.sent[-1][:2] == ("900", True)  # 1 s less a tenth
    with deadline.budget(12.0):  # slow work with a budget of its own: raised, up to the statement cap
        deadline.fit_server_timeouts(conn, dbapi, local=True)
    assert conn.sent[-1][:2] == ("5000", True)
    with deadline.budget():  # outside a request, asked for none: no deadline, nothing to fit
        assert remaining() is None
        deadline.fit_server_timeouts(conn, dbapi, local=True)
    assert len(conn.sent) == 2
    with deadline.budget(0.0), pytest.raises(DBAPIError) as raised:  # nothing left
        deadline.fit_server_timeouts(conn, dbapi, local=True)
    assert isinstance(raised.value.orig, DeadlineExceeded)


def _server_timeouts(conn) -> tuple[int, int]:
    """The session's statement and lock timeouts, in ms."""
    sql = "SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l"
    return tuple(int(value.removesuffix("ms")) for value in conn.exec_driver_sql(sql).first())


@pytest.mark.parametrize("single_statement", [True, False], ids=["autocommit", "transaction"])
def test_each_attempt_gets_server_timeouts_from_the_budget_left(postgres_url, single_statement):
    app = make_app(postgres_url, DB_DEADLINE_SECONDS=3.0, POOL_SIZE=1, POOL_MAX_OVERFLOW=0)
    with app.app_context():
        deadline = database_deadline()

        def timeouts(budget: float) -> int:
            with deadline.budget(budget):
                statement, lock = run_transaction(_server_timeouts, single_statement=single_statement)
            assert statement == lock
            return statement

        with frozen_deadline_clock():
            assert timeouts(3.0) == 2750  # connects: the session starts at a full budget's 2750 ms
            assert timeouts(1.0) == 900  # most of the budget spent: just under what is left
            # a SET LOCAL ends with its transaction; a session SET is raised again by the next full budget
            assert timeouts(3.0) == 2750


@pytest.mark.parametrize("single_statement", [True, False], ids=["autocommit", "transaction"])
def test_a_server_timeout_says_what_the_process_believed(postgres_url, single_statement):
    """The error of a statement the server's timeout ended carries, for its log line, how long it
    ran, the session timeout this process recorded for the connection and the budget left."""
    app = make_app(postgres_url, DB_DEADLINE_SECONDS=3.0, DB_STATEMENT_TIMEOUT_MS=50, POOL_SIZE=1)
    with app.app_context(), pytest.raises(OperationalError) as ended:
        run_transaction(
            lambda conn: conn.exec_driver_sql("SELECT pg_sleep(0.5)"), single_statement=single_statement
        )
    assert isinstance(ended.value.orig, pg_errors.QueryCanceled)
    (note,) = ended.value.__notes__
    assert note.startswith("server timeout after ")
    assert note.endswith(" ms; session timeout as recorded: 50 ms; budget left: none")
    assert 40 <= int(note.split()[3]) < 500


def test_budgets_nest_and_the_sooner_end_wins():
    deadline = Deadline(3.0, 0)
    with deadline.budget(1.0):
        with deadline.budget(10.0):
            assert remaining() <= 1.0
        with deadline.budget(0.5):
            assert remaining() <= 0.5
        assert 0.5 < remaining() <= 1.0
    assert remaining() is None


def test_a_stall_fails_the_next_database_work_at_once_for_a_moment():
    deadline = Deadline(1.0, 0)
    with pytest.raises(DeadlineExceeded), deadline.budget(1.0):
        raise DeadlineExceeded("no answer")
    with pytest.raises(DatabaseStalled), deadline.budget(1.0):
        pass
    deadline.stalled_until = 0.0  # the cool-down is over
    with deadline.budget(1.0):
        pass


def test_only_timeouts_that_spent_the_budget_count_as_a_stall():
    deadline = Deadline(3.0, 0)
    lock_timeout = pg_errors.LockNotAvailable("canceling statement due to lock timeout")
    assert deadline.is_stall(DeadlineExceeded("x"), 2.0)
    assert deadline.is_stall(PoolTimeoutError("x"), 2.0)
    assert deadline.is_stall(DBAPIError.instance(None, None, lock_timeout, pg_errors.Error), 0.1)
    assert not deadline.is_stall(lock_timeout, 2.0)  # a statement cap, not the budget
    assert not deadline.is_stall(pg_errors.UniqueViolation("x"), 0.0)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "601"])
def test_a_bad_deadline_stops_the_start(monkeypatch, value):
    monkeypatch.setenv("DB_DEADLINE_SECONDS", value)
    with pytest.raises(ConfigError, match="DB_DEADLINE_SECONDS"):
        make_app("sqlite://")


def test_the_sqlite_path_keeps_working_under_a_short_deadline(sqlite_url):
    app = make_app(sqlite_url, DB_DEADLINE_SECONDS=0.1)
    reset_database(app)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/api/tokens/activate", json={"user_id": str(uuid.uuid4())}).status_code == 200
    assert client.get("/api/tokens/summary").get_json()["active"] == 3
    with app.app_context():
        assert database_deadline().stalled_until == 0.0


def test_retries_stop_when_the_budget_is_spent(sqlite_url):
    app = make_app(sqlite_url, DB_DEADLINE_SECONDS=0.5)
    attempts = []

    def deadlocked(conn):
        attempts.append(time.perf_counter())
        time.sleep(0.22)
        raise OperationalError("UPDATE tokens", {}, pg_errors.DeadlockDetected("deadlock detected"))

    with app.app_context(), pytest.raises(OperationalError):
        run_transaction(deadlocked, attempts=10, budget_seconds=0.5)
    assert len(attempts) == 2  # 0.44 s spent: too little budget left for a third
