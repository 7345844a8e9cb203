"""Through a real PgBouncer in transaction pooling mode (`DB_PGBOUNCER=true`).

A private PostgreSQL cluster and a private PgBouncer (its own config file, a
free port, two server connections for many client connections), both started
here and stopped by pid. In transaction mode consecutive transactions of one
client connection land on different server connections: session state
(startup `options`, `SET`, prepared statements) does not follow them.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from service.db import database_deadline, run_transaction
from tests.conftest import make_app, reset_database
from tests.helpers import activate, frozen_deadline_clock, release, user
from tests.invariants import violations
from tests.procs import ThrowawayPgBouncer, ThrowawayPostgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = 6


@pytest.fixture(scope="module")
def cluster():
    pg = ThrowawayPostgres().init().start()
    try:
        reset_database(make_app(pg.url, MAX_ACTIVE_TOKENS=POOL), POOL)  # migrations: direct, not pooled
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="module")
def bouncer(cluster):
    pgbouncer = ThrowawayPgBouncer(cluster.port, pool_size=2).start()
    try:
        yield pgbouncer
    finally:
        pgbouncer.stop()


@pytest.fixture
def app(bouncer):
    return make_app(bouncer.url, DB_PGBOUNCER=True, MAX_ACTIVE_TOKENS=POOL, POOL_SIZE=6, POOL_MAX_OVERFLOW=0)


def test_every_route_works_through_pgbouncer_in_transaction_mode(cluster, bouncer, app):
    """Six threads on six client connections share two server connections; each statement runs 20+ times."""
    statuses: list[int] = []
    lock = threading.Lock()

    def client_loop() -> None:
        client = app.test_client()
        seen = []
        for _ in range(12):
            lease = activate(client, user())
            seen.append(lease.status_code)
            if lease.status_code == 200:
                seen.append(client.get(f"/api/tokens/{lease.get_json()['token_id']}").status_code)
                seen.append(release(client, lease.get_json()).status_code)
            seen.append(client.get("/api/tokens/summary").status_code)
        with lock:
            statuses.extend(seen)

    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses and set(statuses) <= {200, 409}, sorted(set(statuses))
    assert statuses.count(200) > 0.8 * len(statuses)
    assert app.test_client().get("/health/ready").status_code == 200
    engine = create_engine(cluster.url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert violations(conn) == {}
    finally:
        engine.dispose()


def _timeouts(conn) -> tuple[str, str]:
    row = conn.exec_driver_sql(
        "SELECT current_setting('statement_timeout') AS s, current_setting('lock_timeout') AS l"
    ).first()
    return row.s, row.l


@pytest.mark.parametrize("single_statement", [False, True], ids=["transaction", "single-statement"])
def test_the_timeouts_apply_per_transaction_through_pgbouncer(bouncer, app, single_statement):
    """A transaction SETs them LOCAL; one-statement work sends them in the statement's own message."""
    with app.app_context():
        with frozen_deadline_clock(), database_deadline().budget(1.0):
            statement, lock = run_transaction(_timeouts, single_statement=single_statement)
        assert statement == lock == "900ms"  # 1 s less a tenth
        # the server itself cancels a statement past the budget: the timeout is in force
        with database_deadline().budget(1.0), pytest.raises(OperationalError) as raised:
            run_transaction(
                lambda conn: conn.exec_driver_sql("SELECT pg_sleep(3)"), single_statement=single_statement
            )
        assert isinstance(raised.value.orig, psycopg.errors.QueryCanceled)
    # and nothing of it is left in a session another client may get next
    plain = bouncer.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True, prepare_threshold=None) as conn:
        for _ in range(4):
            assert conn.execute(text("SHOW statement_timeout").text).fetchone()[0] == "0"
