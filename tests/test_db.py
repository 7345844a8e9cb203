"""service/db.py: one transaction per call, retried only when retrying is safe, on SQLite and PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, MultipleResultsFound, NoResultFound
from sqlalchemy.pool import NullPool, QueuePool

from service.db import AutocommitConnection, Rows, is_postgres, observe_queries, pool_limit, run_transaction
from tests.helpers import POOL

# pytest-flask pushes a request context for tests that use `app`, without a request's start:
# an explicit budget keeps the request deadline of an earlier test's request out of these
BUDGET = {"budget_seconds": 60}


def count_tokens(conn) -> int:
    return conn.execute(text("SELECT count(*) FROM tokens")).scalar()


def database_error(orig: Exception) -> DBAPIError:
    """The error SQLAlchemy raises for a driver error `orig`."""
    return DBAPIError.instance("SELECT 1", None, orig, psycopg.Error)


class FailsFirst:
    """Work that raises `error` on its first `failures` calls, then counts the tokens."""

    def __init__(self, error: Exception, failures: int = 1) -> None:
        self.error, self.failures, self.calls = error, failures, 0

    def __call__(self, conn) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return count_tokens(conn)


def test_the_work_is_committed(app):
    with app.app_context():
        run_transaction(lambda conn: conn.execute(text("DELETE FROM tokens")), **BUDGET)
        assert run_transaction(count_tokens, **BUDGET) == 0


def test_an_error_in_the_work_rolls_everything_back(app):
    def delete_then_fail(conn):
        conn.execute(text("DELETE FROM tokens"))
        raise RuntimeError("half done")

    with app.app_context():
        with pytest.raises(RuntimeError, match="half done"):
            run_transaction(delete_then_fail, **BUDGET)
        assert run_transaction(count_tokens, **BUDGET) == POOL


@pytest.mark.parametrize("sqlstate_error", [psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable])
def test_a_deadlock_or_lock_timeout_is_retried(app, sqlstate_error):
    work = FailsFirst(database_error(sqlstate_error("try again")))
    with app.app_context():
        assert run_transaction(work, **BUDGET) == POOL
    assert work.calls == 2


def test_retries_stop_after_the_attempts(app):
    work = FailsFirst(database_error(psycopg.errors.SerializationFailure("again")), failures=5)
    with app.app_context(), pytest.raises(DBAPIError):
        run_transaction(work, attempts=3, **BUDGET)
    assert work.calls == 3


def test_an_error_that_retrying_cannot_fix_is_raised_at_once(app):
    work = FailsFirst(database_error(psycopg.errors.UniqueViolation("duplicate")))
    with app.app_context(), pytest.raises(IntegrityError):
        run_transaction(work, **BUDGET)
    assert work.calls == 1


def test_single_statement_work_runs_in_autocommit_on_postgresql_only(app, is_postgres):
    seen = []

    def work(conn):
        seen.append(conn)
        return conn.execute(text("SELECT 1")).first()

    with app.app_context():
        assert tuple(run_transaction(work, single_statement=True, **BUDGET)) == (1,)
        run_transaction(work, **BUDGET)
    assert isinstance(seen[0], AutocommitConnection) is is_postgres
    assert not isinstance(seen[1], AutocommitConnection)
    assert is_postgres is (seen[1].dialect.name == "postgresql")


def test_is_postgres_names_the_dialect(app):
    with app.app_context():
        assert run_transaction(is_postgres, **BUDGET) is app.config["SQLALCHEMY_DATABASE_URI"].startswith(
            "postgresql"
        )


def test_query_observers_see_every_statement_with_its_duration(app):
    seen: list[tuple[str, float]] = []
    observe_queries(app, lambda statement, seconds: seen.append((statement, seconds)))
    with app.app_context():
        run_transaction(lambda conn: conn.execute(text("SELECT 42")), **BUDGET)
        run_transaction(lambda conn: conn.execute(text("SELECT 43")), single_statement=True, **BUDGET)
    statements = [s for s, _ in seen]
    assert "SELECT 42" in statements and "SELECT 43" in statements
    assert all(seconds >= 0 for _, seconds in seen)


def test_rows_read_like_sqlalchemy_results():
    assert Rows([]).first() is None and Rows([]).one_or_none() is None
    assert Rows([(1,)]).one() == (1,) and Rows([(1,), (2,)]).all() == [(1,), (2,)]
    with pytest.raises(NoResultFound):
        Rows([]).one()
    with pytest.raises(MultipleResultsFound):
        Rows([(1,), (2,)]).one_or_none()


def test_pool_limit_is_size_plus_overflow_or_none_without_a_bound():
    def connect():
        raise AssertionError("no connection is opened")

    assert pool_limit(QueuePool(connect, pool_size=5, max_overflow=3)) == 8
    assert pool_limit(QueuePool(connect, pool_size=5, max_overflow=-1)) is None
    assert pool_limit(NullPool(connect)) is None
