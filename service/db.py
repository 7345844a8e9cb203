"""Database wiring: engine set-up per dialect and the one transaction runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from .extensions import db, migrate

T = TypeVar("T")

# deadlock, serialization failure, lock timeout: safe to run the transaction again
RETRYABLE_SQLSTATES = {"40P01", "40001", "55P03"}


def init_db(app) -> None:
    """Bind Flask-SQLAlchemy and Flask-Migrate; make SQLite transactions serialise writers."""
    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True, compare_type=True)
    with app.app_context():
        engine = db.engine  # created lazily, no connection is opened here
        if engine.dialect.name == "sqlite":
            _serialise_sqlite(engine)


def _serialise_sqlite(engine) -> None:
    """`BEGIN IMMEDIATE` for every transaction, so concurrent writers queue instead of racing."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def observe_queries(app, observer: Callable[[str, float], None]) -> None:
    """Call `observer(statement, seconds)` after every statement of the app's engine."""
    observers = app.extensions.get("tokenpool.query_observers")
    if observers is None:
        observers = app.extensions["tokenpool.query_observers"] = []
        with app.app_context():
            engine = db.engine

        @event.listens_for(engine, "before_cursor_execute")
        def _start(conn, cursor, statement, parameters, context, executemany):
            conn.info["query_start"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _stop(conn, cursor, statement, parameters, context, executemany):
            elapsed = time.perf_counter() - conn.info.pop("query_start", time.perf_counter())
            for notify in observers:
                notify(statement, elapsed)

    observers.append(observer)


def is_postgres(conn) -> bool:
    """Whether this connection talks to PostgreSQL (else: the embedded SQLite)."""
    return conn.dialect.name == "postgresql"


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _retryable(exc: DBAPIError) -> bool:
    # a stale pooled connection (database restarted) fails on its first statement and is
    # invalidated with the rest of the pool; the next attempt gets a fresh connection
    return exc.connection_invalidated or _sqlstate(exc) in RETRYABLE_SQLSTATES


def run_transaction(
    work: Callable[..., T], /, *args, attempts: int = 3, single_statement: bool = False, **kwargs
) -> T:
    """Run `work(conn, *args, **kwargs)` in one transaction and commit it.

    Retries on deadlock, lock timeout or a dropped connection. `single_statement`
    work runs in autocommit on PostgreSQL (the statement is its own transaction),
    saving the BEGIN and COMMIT round trips.
    """
    for attempt in range(1, attempts + 1):
        try:
            if single_statement and db.engine.dialect.name == "postgresql":
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    return work(conn, *args, **kwargs)
            with db.engine.begin() as conn:
                return work(conn, *args, **kwargs)
        except DBAPIError as exc:
            if attempt == attempts or not _retryable(exc):
                raise
    raise AssertionError("unreachable")
