"""Dependency faults on throwaway servers started here (never the machine's shared ones).

In-process apps (make_app) against a private PostgreSQL cluster or Redis server
on a free port; the test stops, freezes and restarts them.
"""

from __future__ import annotations

import time

import pytest

from service.extensions import db
from service.tokens.sweeper import run_sweep
from tests.conftest import make_app, reset_database
from tests.helpers import POOL, activate, assert_error, release, user
from tests.procs import ThrowawayPostgres, ThrowawayRedis, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOSTNAMES = ("127.0.0.1", "localhost")


def _poll(client, path: str, status: int, timeout: float) -> float:
    """Seconds until `path` answers `status`; fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if client.get(path).status_code == status:
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"{path} did not answer {status} within {timeout}s")


@pytest.fixture
def throwaway_pg():
    pg = ThrowawayPostgres().init().start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def pg_app(throwaway_pg, clock):
    app = make_app(
        throwaway_pg.url,
        TOKEN_CLOCK=clock,
        POOL_SIZE=2,
        POOL_MAX_OVERFLOW=2,
        DB_CONNECT_TIMEOUT=2,
        HEALTH_CHECK_TIMEOUT=2,
    )
    reset_database(app)
    run_sweep(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def test_postgres_down_fails_readiness_fast_and_recovers_without_restart(throwaway_pg, pg_app):
    client = pg_app.test_client()
    for path in ("/health/ready", "/health", "/health/startup"):  # warm: pooled connections exist
        assert client.get(path).status_code == 200, path

    throwaway_pg.stop("fast")
    took = _poll(client, "/health/ready", 503, timeout=10)
    print(f"readiness noticed the outage after {took:.3f}s")
    assert took < 5, f"readiness took {took:.2f}s to notice the outage"

    body = assert_error(client.get("/health/ready"), 503, "SERVICE_UNAVAILABLE", "Not ready: database")
    assert body["details"]["failed_checks"] == ["database"]
    assert body["details"]["checks"]["database"]["error"]  # an exception class name, nothing more
    detailed = client.get("/health")
    assert detailed.status_code == 503
    report = detailed.get_json()
    assert report["status"] == "unhealthy"
    assert report["checks"]["database"]["status"] == "unhealthy"
    assert report["checks"]["tokens"]["status"] == "unhealthy"
    for path in ("/health/live", "/health/liveness", "/live", "/healthz"):
        assert client.get(path).status_code == 200, path
    assert client.get("/health/startup").status_code == 200  # start-up happened; no restart loop
    for response in (detailed, client.get("/health/ready")):
        text = response.get_data(as_text=True)
        assert str(throwaway_pg.port) not in text and not any(h in text for h in HOSTNAMES), text

    throwaway_pg.start()  # same port, same data: the app is not restarted
    _poll(client, "/health/ready", 200, timeout=15)
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "healthy"
    assert activate(client, user()).status_code in (200, 201)


def test_a_hung_postgres_cannot_hang_the_probes(throwaway_pg, pg_app):
    """Frozen, not stopped: connections open but nothing answers. Each check has its own timeout."""
    client = pg_app.test_client()
    assert client.get("/health/ready").status_code == 200
    pids = throwaway_pg.freeze()
    try:
        start = time.monotonic()
        response = client.get("/health/ready")
        took = time.monotonic() - start
        assert response.status_code == 503
        assert took < pg_app.config["HEALTH_CHECK_TIMEOUT"] + 1.5, took
        check = response.get_json()["details"]["checks"]["database"]
        assert check["error"] == "timed out after 2s"
        start = time.monotonic()
        assert client.get("/health").status_code == 503
        assert time.monotonic() - start < pg_app.config["HEALTH_CHECK_TIMEOUT"] + 1.5
        assert client.get("/health/live").status_code == 200
    finally:
        throwaway_pg.thaw(pids)
    _poll(client, "/health/ready", 200, timeout=15)


@pytest.fixture
def redis_servers():
    """Start throwaway Redis servers through this list; every one is stopped at the end."""
    started: list[ThrowawayRedis] = []

    def start(port: int | None = None) -> ThrowawayRedis:
        started.append(ThrowawayRedis(port=port))
        return started[-1].start()

    yield start
    for server in started:
        server.stop()


def test_redis_down_is_degraded_and_the_api_keeps_answering(sqlite_url, clock, redis_servers):
    throwaway_redis = redis_servers()
    app = make_app(sqlite_url, TOKEN_CLOCK=clock, REDIS_URL=throwaway_redis.url)
    reset_database(app)
    run_sweep(app)
    client = app.test_client()
    try:
        body = client.get("/health").get_json()
        assert body["status"] == "healthy"
        assert body["checks"]["redis"]["status"] == "healthy" and body["checks"]["redis"]["configured"]

        throwaway_redis.stop()
        response = client.get("/health")
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "degraded"
        assert body["checks"]["redis"]["status"] == "degraded"
        assert body["checks"]["redis"]["error"]
        assert throwaway_redis.url not in response.get_data(as_text=True)
        assert (
            client.get("/health", headers={"Accept": "application/health+json"}).get_json(force=True)[
                "status"
            ]
            == "warn"
        )
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health/live").status_code == 200
        holder = user()
        lease = activate(client, holder)
        assert lease.status_code in (200, 201), lease.get_data(as_text=True)
        assert client.get("/api/tokens/summary").get_json()["active"] == 1
        released = release(client, lease.get_json())
        assert released.status_code == 200, released.get_data(as_text=True)

        redis_servers(throwaway_redis.port)  # back on the same address
        wait_for(lambda: client.get("/health").get_json()["status"] == "healthy", 10, what="redis healthy")
        assert client.get("/health").get_json()["checks"]["tokens"]["total"] == POOL
    finally:
        with app.app_context():
            db.engine.dispose()
