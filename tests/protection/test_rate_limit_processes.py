"""The per-IP limit across real processes: two gunicorn instances of two workers each on one Redis."""

from __future__ import annotations

import json

import pytest

from tests.procs import Gunicorn, ThrowawayRedis
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N = 20


def env_for(database_url: str, **extra: str) -> dict:
    return {
        "DATABASE_URL": database_url,
        "RATE_LIMIT_PER_MINUTE": str(N),
        "ENABLE_RATE_LIMITING": "true",
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "2",
        "SWEEPER_ENABLED": "false",
        **extra,
    }


def spread(servers, count: int) -> list[tuple[int, bytes, dict]]:
    """`count` GETs alternating over the servers, a new connection each (so over the workers too)."""
    return [http_get(servers[i % len(servers)].url + "/api/tokens/summary") for i in range(count)]


def test_two_instances_on_one_redis_allow_exactly_n(pg_database):
    url = pg_database()
    redis = ThrowawayRedis().start()
    try:
        env = env_for(url, REDIS_URL=redis.url)
        with Gunicorn(env, workers=2) as a, Gunicorn(env, workers=2) as b:
            answers = spread([a, b], 2 * N)
            statuses = [status for status, _, _ in answers]
            assert statuses.count(200) == N and statuses.count(429) == N, statuses
            assert statuses == [200] * N + [429] * N  # the window began with the first request
            status, raw, headers = answers[-1]
            body = json.loads(raw)
            assert body["error_code"] == "RATE_LIMITED" and body["error"] == "Rate limit exceeded"
            assert body["message"] == "Too many requests. Please try again later."
            assert body["status"] == "too_many_requests" and body["request_id"] == headers["X-Request-ID"]
            assert 1 <= body["retry_after"] <= 61 and headers["Retry-After"] == str(body["retry_after"])
            assert headers["X-RateLimit-Limit"] == str(N) and headers["X-RateLimit-Remaining"] == "0"
            for server in (a, b):
                assert sum("Booting worker" in line for line in server.log_lines()) == 2
                assert not any("memory://" in line for line in server.log_lines())
    finally:
        redis.stop()


def test_without_redis_each_process_counts_alone_and_says_so(pg_database):
    """The control: memory:// under several workers lets through more than N, and warns at start."""
    url = pg_database()
    with Gunicorn(env_for(url), workers=2) as a, Gunicorn(env_for(url), workers=2) as b:
        statuses = [status for status, _, _ in spread([a, b], 2 * N)]
        assert statuses.count(200) > N
        warning = "rate limits use memory:// with several workers"
        for server in (a, b):
            assert any(warning in line for line in server.log_lines())
