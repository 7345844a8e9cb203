"""Database wiring: engine set-up per dialect and the one transaction runner."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from flask import current_app
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.pool import NullPool

from .config import ConfigError
from .deadline import BoundedConnection, Deadline, is_server_timeout, note_server_timeout, remaining
from .extensions import db, migrate
from .state import app_state

T = TypeVar("T")

# deadlock, serialization failure, lock timeout: safe to run the transaction again
RETRYABLE_SQLSTATES = {"40P01", "40001", "55P03"}


def init_db(app) -> None:
    """Bind Flask-SQLAlchemy and Flask-Migrate; bound PostgreSQL waits; serialise SQLite writers."""
    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True, compare_type=True)
    deadline = app_state(app).deadline = Deadline(
        app.config["DB_DEADLINE_SECONDS"],
        app.config["DB_STATEMENT_TIMEOUT_MS"],
        session_state=not app.config["DB_PGBOUNCER"],
    )
    with app.app_context():
        engine = db.engine  # created lazily, no connection is opened here
        if engine.dialect.name == "sqlite":
            _serialise_sqlite(engine)
        elif engine.dialect.name == "postgresql":
            _bound_waits(engine, deadline)


def _bound_waits(engine, deadline: Deadline) -> None:
    """Connect with BoundedConnection: every wait on the socket ends at the deadline."""
    # what engine_options' startup options set; unknown through PgBouncer (no session state)
    session_timeout_ms = deadline.session_timeout_ms() if deadline.session_state else None

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, record, cargs, cparams):
        conn = BoundedConnection.connect(*cargs, **cparams)
        conn.server_timeout_ms = session_timeout_ms
        return conn

    @event.listens_for(engine, "handle_error")
    def _note(context):  # as AutocommitConnection.exec_driver_sql does for one-statement work
        conn, error = context.connection, context.sqlalchemy_exception
        if conn is not None and error is not None and is_server_timeout(context.original_exception):
            started = conn.info.get("query_start")  # observe_queries' mark, when it observes
            elapsed = None if started is None else time.perf_counter() - started
            note_server_timeout(error, conn.connection.driver_connection, elapsed)


def database_deadline() -> Deadline:
    """The current app's database deadline (settings and stall state)."""
    return app_state().deadline


@contextmanager
def bounded_connection(budget_seconds: float | None = None) -> Iterator[Connection]:
    """`db.engine.connect()` for reads outside run_transaction, under the database deadline.

    On PostgreSQL its transaction gets server timeouts that fit the budget (see
    `Deadline.budget` for `budget_seconds`). Raises DatabaseStalled at once while
    the database is known to be stalled.
    """
    deadline = database_deadline()
    with deadline.budget(budget_seconds), db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            deadline.fit_server_timeouts(conn, conn.connection.driver_connection, local=True)
        yield conn


def direct_engine() -> Engine:
    """An engine on PostgreSQL itself, for work that needs a session of its own.

    Migrations take a session-level advisory lock and set session variables
    (LISTEN would need a session too); a transaction-pooling PgBouncer hands the
    server connection to other clients between transactions, and such a lock
    would stay behind on it. `DATABASE_DIRECT_URL` when set (an engine without a
    pool: every connection is closed when released); else the app's own engine,
    unless `DATABASE_URL` is PgBouncer (`DB_PGBOUNCER`): then ConfigError, and
    no connection is opened.
    """
    config = current_app.config
    url = config.get("DATABASE_DIRECT_URL")
    if url:
        return create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": config["DB_CONNECT_TIMEOUT"]}
        )
    if config["DB_PGBOUNCER"]:
        raise ConfigError(
            "DB_PGBOUNCER=true: migrations need a session of their own; set DATABASE_DIRECT_URL"
            " to PostgreSQL itself (not PgBouncer)"
        )
    return db.engine


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
    observers = app_state(app).query_observers
    if not observers:  # the first observer: listen to the engine
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


def pool_limit(pool) -> int | None:
    """The most connections `pool` opens at once: a QueuePool's size plus its overflow.

    None for a pool without that bound (unlimited overflow, NullPool, StaticPool).
    SQLAlchemy keeps the overflow only as `QueuePool._max_overflow`;
    tests/protection/test_library_tripwires.py fails if that changes.
    """
    overflow = getattr(pool, "_max_overflow", None)
    if overflow is None or overflow < 0 or not hasattr(pool, "size"):
        return None
    return pool.size() + overflow


def is_postgres(conn) -> bool:
    """Whether this connection talks to PostgreSQL (else: the embedded SQLite)."""
    return conn.dialect.name == "postgresql"


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _retryable(exc: DBAPIError) -> bool:
    # a stale pooled connection (database restarted) fails on its first statement and is
    # invalidated with the rest of the pool; the next attempt gets a fresh connection
    return exc.connection_invalidated or _sqlstate(exc) in RETRYABLE_SQLSTATES


class Rows(list):
    """The rows of one statement, read the way SQLAlchemy results are."""

    def first(self):
        """The first row, or None when there is none."""
        return self[0] if self else None

    def all(self):
        """Every row (this list itself)."""
        return self

    def one_or_none(self):
        """The only row, or None. Raises MultipleResultsFound for more than one."""
        if len(self) > 1:
            raise MultipleResultsFound("more than one row")
        return self.first()

    def one(self):
        """The only row. Raises NoResultFound for none, MultipleResultsFound for more than one."""
        row = self.one_or_none()
        if row is None:
            raise NoResultFound("no row")
        return row


class AutocommitConnection:
    """One-statement work on PostgreSQL: a pooled psycopg connection in autocommit.

    Same pool, timeouts, query observers and error types as the engine's
    connections, without SQLAlchemy's Connection around the call, which cost
    about 0.1 ms of CPU per statement (measured; the statement itself is a
    fraction of that). Core statements are compiled once per statement object,
    so they must be built once (as in tokens/reads.py), not per call; rows are
    named tuples. Offers what one-statement work uses: `execute`,
    `exec_driver_sql` and `dialect`.
    """

    _compiled: dict = {}  # statement object -> its PostgreSQL compilation, for the process

    def __init__(self, engine, dbapi_conn) -> None:
        self.dialect = engine.dialect
        self.dbapi_conn = dbapi_conn
        self.broken = False
        self._observers = app_state().query_observers

    def exec_driver_sql(self, sql: str, params=None) -> Rows:
        """Run `sql` (psycopg placeholders) and return its rows as named tuples.

        Raises DBAPIError, as the engine would, for any driver error.
        """
        started = time.perf_counter()
        try:
            rows = self._fetch(sql, params)
        except psycopg.Error as exc:
            error = self.failed(exc, sql, params)
            if is_server_timeout(exc):
                note_server_timeout(error, self.dbapi_conn, time.perf_counter() - started)
            raise error from exc
        elapsed = time.perf_counter() - started
        for notify in self._observers:
            notify(sql, elapsed)
        return rows

    def _fetch(self, sql: str, params) -> Rows:
        with self.dbapi_conn.cursor(row_factory=namedtuple_row) as cursor:
            return Rows(cursor.execute(sql, params).fetchall())

    def failed(self, exc: psycopg.Error, sql: str, params=None) -> DBAPIError:
        """The SQLAlchemy error the engine would raise; notes whether the connection is gone."""
        self.broken = self.dialect.is_disconnect(exc, self.dbapi_conn, None)
        error = DBAPIError.instance(sql, params, exc, psycopg.Error, connection_invalidated=self.broken)
        assert isinstance(error, DBAPIError)  # a driver error is always wrapped as one
        return error

    def execute(self, statement, params=None) -> Rows:
        """Run a Core `statement` (compiled once per statement object); its rows. Raises DBAPIError."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = statement.compile(dialect=self.dialect)
        return self.exec_driver_sql(compiled.string, compiled.construct_params(params))


class PooledStatementConnection(AutocommitConnection):
    """One-statement work through a transaction-pooling PgBouncer (`DB_PGBOUNCER`), in one round trip.

    Each statement goes in one simple-query message after `SET LOCAL` of the
    statement and lock timeouts fitted to the budget left. The server runs
    such a message as one implicit transaction: the timeouts hold for the
    statement (PostgreSQL 13+ times each statement of a message on its own,
    with the settings in force when it starts) and end with it, on whichever
    server connection PgBouncer lends; no BEGIN, COMMIT or separate SET round
    trips. Parameters are bound client-side (psycopg's ClientCursor), as the
    simple protocol takes none; nothing is prepared. Without a budget (outside
    a request) the statement is sent alone.
    """

    def __init__(self, engine, dbapi_conn, deadline: Deadline) -> None:
        super().__init__(engine, dbapi_conn)
        self.deadline = deadline

    def _fetch(self, sql: str, params) -> Rows:
        left = remaining()
        prefix = ""
        if left is not None:
            ms = self.deadline.server_timeout_ms_for(left)
            prefix = f"SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; "
        with psycopg.ClientCursor(self.dbapi_conn, row_factory=namedtuple_row) as cursor:
            cursor.execute(prefix + sql, params)
            if prefix:  # past the two SETs' results to the statement's
                cursor.nextset()
                cursor.nextset()
            return Rows(cursor.fetchall())


def _run_autocommit(engine, deadline: Deadline, work: Callable[..., T], args, kwargs) -> T:
    """`work(conn, ...)` on an AutocommitConnection (PooledStatementConnection through PgBouncer).

    A dropped connection empties the pool.
    """
    try:
        pooled = engine.raw_connection()
    except psycopg.Error as exc:  # the database refuses connections: as engine.connect() would say
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc
    if deadline.session_state:
        conn = AutocommitConnection(engine, pooled.driver_connection)
    else:
        conn = PooledStatementConnection(engine, pooled.driver_connection, deadline)
    try:
        try:
            conn.dbapi_conn.autocommit = True
        except psycopg.Error as exc:
            raise conn.failed(exc, "-- autocommit on") from exc
        if deadline.session_state:
            deadline.fit_server_timeouts(conn, conn.dbapi_conn, local=False)
        return work(conn, *args, **kwargs)
    finally:
        if not conn.broken:
            try:
                conn.dbapi_conn.autocommit = False
            except psycopg.Error:  # it died without saying so: do not pool it
                pooled.invalidate()
        else:
            pooled.invalidate()
            engine.dispose()  # the pool's other connections are as stale as this one
        pooled.close()


def run_transaction(
    work: Callable[..., T],
    /,
    *args,
    attempts: int = 3,
    single_statement: bool = False,
    budget_seconds: float | None = None,
    **kwargs,
) -> T:
    """Run `work(conn, *args, **kwargs)` in one transaction and commit it.

    Retries on deadlock, lock timeout or a dropped connection while the budget
    lasts. The budget (see `Deadline.budget`; `budget_seconds` None: the
    request's, none outside a request) bounds every attempt, and the retries
    together: past it the database error is raised (503). Raises
    DatabaseStalled (503) at once while the database is known to be stalled.
    `single_statement` work runs in autocommit on PostgreSQL (the statement is
    its own transaction), saving the BEGIN and COMMIT round trips; through
    PgBouncer (DB_PGBOUNCER) with its timeouts in the same message
    (PooledStatementConnection).
    """
    deadline = database_deadline()
    with deadline.budget(budget_seconds):
        for attempt in range(1, attempts + 1):
            try:
                engine = db.engine
                if engine.dialect.name != "postgresql":
                    with engine.begin() as conn:
                        return work(conn, *args, **kwargs)
                if single_statement:
                    return _run_autocommit(engine, deadline, work, args, kwargs)
                with engine.begin() as conn:
                    deadline.fit_server_timeouts(conn, conn.connection.driver_connection, local=True)
                    return work(conn, *args, **kwargs)
            except DBAPIError as exc:
                if attempt == attempts or not _retryable(exc) or not deadline.may_retry():
                    raise
    raise AssertionError("unreachable")
