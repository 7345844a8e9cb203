"""Rate limits on a throwaway Redis: served through an outage on memory, one warning, back to Redis."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from service.state import app_state
from tests.conftest import make_app, reset_database
from tests.helpers import user
from tests.observability.test_metrics import sample
from tests.procs import ThrowawayRedis, wait_for
from tests.protection.support import assert_rate_limited

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FALLBACK = "falling back to in-memory"


@pytest.fixture
def throwaway_redis():
    server = ThrowawayRedis().start()
    started = [server]

    def restart() -> ThrowawayRedis:
        again = ThrowawayRedis(port=server.port).start()
        started.append(again)
        return again

    yield server, restart
    for s in started:
        s.stop()


def counters(port: int) -> dict[str, int]:
    """The limiter's counters in Redis (`LIMITS:LIMITER/tokenpool/...`): {key: count}."""
    conn = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        return {k.decode(): int(conn.get(k) or 0) for k in conn.keys("*LIMITER/tokenpool/*")}
    finally:
        conn.close()


def test_counts_are_in_redis_and_exact(sqlite_url, throwaway_redis):
    server, _ = throwaway_redis
    app = make_app(sqlite_url, ENABLE_RATE_LIMITING=True, REDIS_URL=server.url, RATE_LIMIT_PER_MINUTE=3)
    reset_database(app)
    assert app.config["RATELIMIT_STORAGE_URI"] == server.url
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    assert list(counters(server.port).values()) == [3]
    assert_rate_limited(client.get("/api/tokens/summary"))
    # a second app (another worker) on the same Redis sees the same count
    other = make_app(sqlite_url, ENABLE_RATE_LIMITING=True, REDIS_URL=server.url, RATE_LIMIT_PER_MINUTE=3)
    assert_rate_limited(other.test_client().get("/api/tokens/summary"))


def test_redis_outage_falls_back_once_then_returns_to_redis(sqlite_url, throwaway_redis, records):
    server, restart = throwaway_redis
    settings = {"RATE_LIMIT_PER_MINUTE": 1000, "RATE_LIMIT_LEASE": 1}  # each request counted in Redis
    app = make_app(sqlite_url, ENABLE_RATE_LIMITING=True, REDIS_URL=server.url, **settings)
    reset_database(app)
    log = records("flask-limiter")
    client = app.test_client()

    def fallbacks() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sample(text, "tokenpool_rate_limit_storage_fallbacks_total")

    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    assert list(counters(server.port).values()) == [3]
    assert fallbacks() == 0

    server.stop()  # killed: connections refused from now on
    for _ in range(6):
        started = time.monotonic()
        assert client.get("/api/tokens/summary").status_code == 200
        assert time.monotonic() - started < 2  # short socket timeouts: no long stalls
    assert len(log.messages(FALLBACK)) == 1
    assert fallbacks() == 1
    assert not [r for r in log.records if r.levelname in ("ERROR", "CRITICAL")]

    server = restart()  # same port, empty
    wait_for(
        lambda: client.get("/api/tokens/summary").status_code == 200 and counters(server.port),
        timeout=90,
        interval=0.5,
        what="rate limit counters back in Redis",
    )
    before = sum(counters(server.port).values())
    for _ in range(4):
        assert client.get("/api/tokens/summary").status_code == 200
    assert sum(counters(server.port).values()) == before + 4
    assert len(log.messages(FALLBACK)) == 1
    assert fallbacks() == 1

    server.stop()  # a second outage: a second warning
    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    assert len(log.messages(FALLBACK)) == 2
    assert fallbacks() == 2


def limited_client(database_url: str, redis_url: str, **settings):
    """A test client of an app limited on this Redis, after one request (it loads the Lua script),
    and the list of Redis commands the limiter sends from then on."""
    app = make_app(
        database_url, ENABLE_RATE_LIMITING=True, REDIS_URL=redis_url, MONITORING_FLUSH_SECONDS=60, **settings
    )
    reset_database(app)
    client = app.test_client()
    client.get("/api/tokens/summary")
    connection = app_state(app).limiter._storage.get_connection()
    commands = []
    direct = connection.execute_command
    connection.execute_command = lambda *args, **kw: commands.append(args[0]) or direct(*args, **kw)
    return client, commands


def test_a_limited_request_costs_one_redis_round_trip_headers_included(sqlite_url, throwaway_redis):
    server, _ = throwaway_redis
    client, commands = limited_client(sqlite_url, server.url, RATE_LIMIT_PER_MINUTE=50)
    r = client.get("/api/tokens/summary")
    assert r.status_code == 200
    assert commands == ["EVALSHA"]
    assert r.headers["X-RateLimit-Limit"] == "50"
    assert r.headers["X-RateLimit-Remaining"] == "48"
    assert 0 < int(r.headers["X-RateLimit-Reset"]) - time.time() <= 61


def test_far_from_the_limit_a_worker_leases_permits_and_asks_redis_once_a_lease(sqlite_url, throwaway_redis):
    server, _ = throwaway_redis
    settings = {"RATE_LIMIT_PER_MINUTE": 100_000, "RATE_LIMIT_LEASE": 8}
    client, commands = limited_client(sqlite_url, server.url, **settings)  # its first request: a lease of 8
    remaining = []
    for _ in range(23):
        r = client.get("/api/tokens/summary")
        assert r.status_code == 200
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
    # 24 requests in all: 3 leases of 8, 2 of them taken in the loop; counted in Redis when leased
    assert commands == ["EVALSHA", "EVALSHA"]
    assert list(counters(server.port).values()) == [24]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 100_000 - 24


def test_leases_never_admit_more_than_the_limit_and_the_last_permits_are_exact(sqlite_url, throwaway_redis):
    """Two workers on one Redis, a limit large enough to lease: exactly `limit` admitted, never more."""
    server, _ = throwaway_redis
    limit = 1200  # room / 256 >= 2 at the start: the first hits lease, the last ones count one by one
    workers = [
        make_app(
            sqlite_url,
            ENABLE_RATE_LIMITING=True,
            REDIS_URL=server.url,
            RATE_LIMIT_PER_MINUTE=limit,
            MONITORING_FLUSH_SECONDS=60,
        )
        for _ in range(2)
    ]
    reset_database(workers[0])
    clients = [w.test_client() for w in workers]
    admitted = refused = 0
    for i in range(limit + 100):
        status = clients[i % 2].get("/api/tokens/summary").status_code
        assert status in (200, 429)
        admitted += status == 200
        refused += status == 429
    assert admitted == limit
    assert refused == 100
    assert list(counters(server.port).values())[0] >= limit


def test_a_frozen_redis_keeps_every_request_bounded(sqlite_url, throwaway_redis):
    """SIGSTOP: connections are accepted, nothing answers. Every Redis use gives up after its timeout."""
    server, _ = throwaway_redis
    app = make_app(
        sqlite_url,
        APP_ENV="development",  # monitoring open without an admin key
        ENABLE_RATE_LIMITING=True,
        REDIS_URL=server.url,
        RATE_LIMIT_PER_MINUTE=1000,
        RATE_LIMIT_LEASE=1,  # every request asks Redis
        MONITORING_FLUSH_SECONDS=0,  # every request writes its figures to Redis
    )
    reset_database(app)
    client = app.test_client()
    assert client.get("/api/tokens/summary").status_code == 200
    assert client.get("/api/monitoring/metrics").status_code == 200
    server.proc.send_signal(signal.SIGSTOP)
    try:
        answers = []
        for method, path in [("GET", "/api/tokens/summary")] * 3 + [
            ("POST", "/api/tokens/activate"),
            ("GET", "/health"),
            ("GET", "/api/monitoring/metrics"),
        ]:
            started = time.monotonic()
            body = {"user_id": user()} if method == "POST" else None
            response = client.open(path, method=method, json=body)
            answers.append((path, response.status_code, time.monotonic() - started))
        print("\n  frozen Redis: " + ", ".join(f"{p} {s} in {t:.2f}s" for p, s, t in answers))
        # limiter and figures 0.3 s each per round trip, the health check 1 s (measured: 0.3-0.6 s,
        # /health 1.35 s); without the timeouts a request waits until gunicorn kills its worker
        assert all(seconds < 2.5 for _, _, seconds in answers), answers
        assert [status for _, status, _ in answers[:5]] == [200] * 5, answers
        assert client.get("/health").get_json()["checks"]["redis"]["status"] == "degraded"
        unavailable = client.get("/api/monitoring/metrics")  # its figures are in Redis: said so, in time
        assert unavailable.status_code == 503
        assert unavailable.get_json()["error_code"] == "SERVICE_UNAVAILABLE"
    finally:
        server.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: client.get("/health").get_json()["checks"]["redis"]["status"] == "healthy", 10)
