"""Fixtures: one app per test on SQLite and on PostgreSQL, an injectable clock.

The suite shares its PostgreSQL server with other users, so it holds at most
`TEST_PG_CONNECTION_LIMIT` (25) connections to it at any moment: every
connection of the run (this process, and the gunicorn processes it starts)
carries the application name of the run, a guard samples them, and a test
during which the run held more fails.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from flask_migrate import upgrade
from prometheus_client import values
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from service import create_app
from service.background import stop_background
from service.extensions import db
from service.health import state as health_state
from tests.helpers import BUILT_APPS, POOL

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_CONNECTION_LIMIT = int(os.environ.get("TEST_PG_CONNECTION_LIMIT", "25"))
# libpq reads PGAPPNAME: every connection of this run, in this process and its children, is named by it
RUN_APPLICATION_NAME = os.environ.setdefault("PGAPPNAME", f"tokenpool-tests-{os.getpid()}")


class FakeClock:
    """A clock the test moves by hand: `clock.advance(121)` instead of sleeping."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def _postgres_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc)


def require_postgres() -> None:
    """Skip (fail in CI, where REQUIRE_POSTGRES is set) when no PostgreSQL answers."""
    problem = _postgres_available()
    if problem:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES) but unreachable: {problem}")
        pytest.skip(f"NO POSTGRESQL REACHABLE at {PG_ADMIN_URL}: {problem}")


class ConnectionGuard:
    """Samples how many connections this run holds on the shared PostgreSQL server.

    Counts the server's backends named `RUN_APPLICATION_NAME` (its own
    connection included) every `interval` seconds in a daemon thread; `peak`
    is the highest count since the last `take_peak()`.
    """

    def __init__(self, url: str, application_name: str, interval: float = 0.1) -> None:
        self.application_name = application_name
        self.interval = interval
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=3)
        self.lock = threading.Lock()
        self.peak = self.run_peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tokenpool-pg-connection-guard", daemon=True)
        self.thread.start()

    def sample(self) -> int:
        with self.lock:
            count = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (self.application_name,),
            ).fetchone()[0]
            self.peak = max(self.peak, count)
            self.run_peak = max(self.run_peak, count)
            return count

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sample()
            except psycopg.Error:
                return

    def take_peak(self) -> int:
        """The highest count since the last call (one fresh sample included), then start over."""
        self.sample()
        with self.lock:
            peak, self.peak = self.peak, 0
        return peak

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.conn.close()


_guard: list[ConnectionGuard] = []
_run_peak: list[int] = []


@pytest.fixture(scope="session", autouse=True)
def _connection_guard():
    """Start the guard when PostgreSQL answers (a SQLite-only run has nothing to guard)."""
    if _postgres_available() is None:
        _guard.append(ConnectionGuard(PG_ADMIN_URL, RUN_APPLICATION_NAME))
    yield
    while _guard:
        guard = _guard.pop()
        guard.stop()
        _run_peak.append(guard.run_peak)


@pytest.fixture(autouse=True)
def _prometheus_value_class():
    """Undo a test's switch of prometheus_client to multiprocess files (PROMETHEUS_MULTIPROC_DIR).

    The switch is process-wide: the apps of later tests, built without the
    variable, would otherwise look for its folder.
    """
    saved = values.ValueClass
    yield
    values.ValueClass = saved


@pytest.fixture(autouse=True)
def _bounded_connections(_connection_guard, request):
    """Fail the test during which this run held more than PG_CONNECTION_LIMIT connections.

    With `TEST_PG_CONNECTION_LOG=<file>`, each test's peak is appended to that file.
    """
    if _guard:
        _guard[0].take_peak()
    yield
    if _guard:
        peak = _guard[0].take_peak()
        log_path = os.environ.get("TEST_PG_CONNECTION_LOG")
        if log_path:
            with open(log_path, "a") as log:
                log.write(f"{peak}\t{request.node.nodeid}\n")
        if peak > PG_CONNECTION_LIMIT:
            pytest.fail(
                f"this test run held {peak} PostgreSQL connections at once "
                f"(limit TEST_PG_CONNECTION_LIMIT={PG_CONNECTION_LIMIT})"
            )


def pytest_terminal_summary(terminalreporter):
    if _run_peak:
        terminalreporter.write_line(
            f"PostgreSQL connections held by this run: at most {max(_run_peak)} "
            f"(limit {PG_CONNECTION_LIMIT}, application_name {RUN_APPLICATION_NAME})"
        )


@contextlib.contextmanager
def temporary_database(prefix: str):
    """A new empty database on the shared server, dropped afterwards; yields its psycopg URL."""
    require_postgres()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def migrated_database(pool: int = POOL, prefix: str = "tokenpool_e2e"):
    """A new database at the schema head with `pool` tokens, for real processes; dropped afterwards.

    Yields its SQLAlchemy URL (psycopg driver). No connection of this process stays open.
    """
    with temporary_database(prefix) as url:
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        app = make_app(url)
        try:
            reset_database(app, pool)
        finally:
            with app.app_context():
                db.engine.dispose()
        yield url


@contextlib.contextmanager
def database(url: str):
    """A connection to the database at `url` (a process's, not an app's); its engine disposed after."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with temporary_database("tokenpool_test") as url:
        yield url


@pytest.fixture
def pg_database(postgres_url):
    """Factory: a new migrated and seeded PostgreSQL database for real processes; dropped after."""
    with contextlib.ExitStack() as stack:
        yield lambda pool=POOL: stack.enter_context(migrated_database(pool))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    return "sqlite:///" + str(tmp_path_factory.mktemp("sqlite") / "tokenpool.sqlite3")


def make_app(database_url: str, **overrides):
    """An app for tests: testing settings, quiet logs, the given database."""
    settings = {
        "APP_ENV": "testing",
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "MAX_ACTIVE_TOKENS": POOL,
        "SWEEPER_ENABLED": False,
        "HEALTH_CACHE_SECONDS": 0,
        "LOG_LEVEL": "WARNING",
        "POOL_SIZE": 5,
        "POOL_MAX_OVERFLOW": 5,
    }
    settings.update(overrides)
    app = create_app(settings)
    BUILT_APPS.append(app)
    return app


@pytest.fixture(autouse=True)
def _dispose_engines():
    """Close the database connections of every app a test built, so none leaks."""
    yield
    while BUILT_APPS:
        app = BUILT_APPS.pop()
        stop_background(app)
        with app.app_context():
            db.engine.dispose()


@functools.cache
def head_revision() -> str:
    """The newest revision of migrations/."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).resolve().parent.parent / "migrations")).get_current_head()


def _at_head() -> bool:
    """Whether the app's database is at `head_revision()`: asked of the database itself, as a
    throwaway server may come back on a port (so a URL) that an earlier one had."""
    with db.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return conn.scalar(text("SELECT version_num FROM alembic_version")) == head_revision()


def reset_database(app, pool: int = POOL) -> None:
    """Schema at head, no rows, only the `default` pool, of `pool` fresh tokens."""
    from service.db import run_transaction
    from service.tokens import service

    with app.app_context():
        if not _at_head():
            upgrade()
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM events"))
            conn.execute(text("DELETE FROM tickets"))
            conn.execute(text("DELETE FROM token_usages"))
            conn.execute(text("DELETE FROM tokens"))
            conn.execute(text("DELETE FROM pools WHERE name <> 'default'"))
            conn.execute(
                text("UPDATE pools SET size = 1, max_lifetime_seconds = NULL WHERE name = 'default'")
            )
            conn.execute(text("UPDATE sweeper_state SET last_run_at = NULL, last_expired_count = 0"))
        run_transaction(service.seed, pool)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def app(database_url, clock, request):
    marker = request.node.get_closest_marker("options")
    overrides = dict(marker.kwargs) if marker else {}
    overrides.setdefault("TOKEN_CLOCK", clock)
    app = make_app(database_url, **overrides)
    reset_database(app, overrides.get("MAX_ACTIVE_TOKENS", POOL))
    health_state.clear_cache()
    return app


@pytest.fixture
def is_postgres(app):
    return app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
