"""Rate-limit headers: resets never earlier than the limit admits again; the IETF pair beside the legacy."""

from __future__ import annotations

import re
import time

import pytest
import redis

from tests.conftest import make_app
from tests.protection.support import assert_rate_limited, create_key, with_key

STATE = re.compile(r'^"([a-z-]+)";r=(\d+);t=(\d+)$')


def ietf_state(r) -> dict[str, tuple[int, int]]:
    """RateLimit: {policy: (remaining, seconds to reset)}."""
    found = {}
    for item in r.headers["RateLimit"].split(", "):
        name, remaining, reset = STATE.match(item).groups()
        found[name] = (int(remaining), int(reset))
    return found


def window_ends(url: str, prefix: str) -> list[tuple[float, float]]:
    """(earliest, latest) Unix time at which Redis expires each of the limiter's keys under `prefix`."""
    conn = redis.Redis.from_url(url)
    try:
        ends = []
        for key in conn.keys(f"*{prefix}*"):
            before = time.time()
            pttl = conn.pttl(key)
            after = time.time()
            ends.append((before + pttl / 1000 - 0.001, after + pttl / 1000 + 0.001))
        return ends
    finally:
        conn.close()


def test_reset_headers_are_never_earlier_than_redis_expires_the_window(build, on_redis):
    """No sleeping: the window's end in Redis (PTTL) against Retry-After, X-RateLimit-Reset and RateLimit."""
    client = build(RATE_LIMIT_PER_MINUTE=5, **on_redis).test_client()
    assert client.get("/api/tokens/summary").status_code == 200  # the window starts
    time.sleep(0.6)  # Redis's TTL rounds to whole seconds: 59.4 s left would say 59
    for _ in range(4):
        assert client.get("/api/tokens/summary").status_code == 200
    r = client.get("/api/tokens/summary")
    received = time.time()
    assert_rate_limited(r)
    [(earliest_end, _)] = window_ends(on_redis["REDIS_URL"], on_redis["RATELIMIT_KEY_PREFIX"])
    # a client waiting exactly what it was told arrives once Redis has dropped the window
    assert received + int(r.headers["Retry-After"]) >= earliest_end
    assert int(r.headers["X-RateLimit-Reset"]) >= earliest_end
    assert received + ietf_state(r)["ip-minute"][1] >= earliest_end
    assert ietf_state(r)["ip-minute"][1] <= 60


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_waiting_exactly_retry_after_is_admitted(sqlite_url, on_redis, storage):
    """A real wait (2.6 s), on a 2-second window (the failed-auth budget), on both storages."""
    settings = {"ENABLE_RATE_LIMITING": True, "AUTH_FAILURE_RATE_LIMIT": "1 per 2 seconds"}
    app = make_app(sqlite_url, **settings, **(on_redis if storage == "redis" else {}))
    client = app.test_client()
    bad = {"X-API-Key": "tp_not-a-key"}
    assert client.get("/api/tokens/summary", headers=bad).status_code == 401  # the window starts
    time.sleep(0.6)  # 1.4 s left: a TTL in whole seconds would say 1
    r = client.get("/api/tokens/summary", headers=bad)
    body = assert_rate_limited(r, "Too many failed authentication attempts.", max_seconds=2)
    time.sleep(body["retry_after"])
    assert client.get("/api/tokens/summary", headers=bad).status_code == 401  # refused as a key, not limited


def test_ietf_headers_for_the_ip_policy(build):
    client = build(RATE_LIMIT_PER_MINUTE=3).test_client()
    for remaining in (2, 1, 0):
        r = client.get("/api/tokens/summary")
        assert r.headers["RateLimit-Policy"] == '"ip-minute";q=3;w=60'
        state = ietf_state(r)
        assert set(state) == {"ip-minute"} and state["ip-minute"][0] == remaining
        assert 0 < state["ip-minute"][1] <= 60
    r = client.get("/api/tokens/summary")
    assert_rate_limited(r)
    assert ietf_state(r)["ip-minute"] == (0, int(r.headers["Retry-After"]))


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_ietf_headers_for_the_key_policies(build, on_redis, storage):
    settings = on_redis if storage == "redis" else {}
    app = build(API_KEY_RATE_LIMIT_PER_HOUR=500, **settings)
    key = create_key(app, "tight", "client", "--per-minute", "2")
    client = app.test_client()
    for n in (1, 2):
        r = client.get("/api/tokens/summary", headers=with_key(key))
        assert r.status_code == 200
        assert r.headers["RateLimit-Policy"] == '"key-minute";q=2;w=60, "key-hour";q=500;w=3600'
        state = ietf_state(r)
        assert state["key-minute"][0] == 2 - n and state["key-hour"][0] == 500 - n
        assert 0 < state["key-minute"][1] <= 60 and 60 < state["key-hour"][1] <= 3600
        assert int(r.headers["X-RateLimit-Remaining-Minute"]) == 2 - n
        assert int(r.headers["X-RateLimit-Reset-Minute"]) >= time.time()
    r = client.get("/api/tokens/summary", headers=with_key(key))
    assert_rate_limited(r)
    assert ietf_state(r)["key-minute"] == (0, int(r.headers["Retry-After"]))
    assert "key-hour" not in ietf_state(r)  # refused by the minute: the hour was not hit


def test_an_unknown_key_is_counted_by_no_rate_limit_and_its_answer_carries_no_limit_headers(build):
    """It has no key to count under; the failed-authentication budget counts it instead."""
    app = build(ENABLE_RATE_LIMITING=True, RATE_LIMIT_PER_MINUTE=5, AUTH_FAILURE_RATE_LIMIT="2/minute")
    client = app.test_client()
    first = client.get("/api/tokens/summary")
    assert ietf_state(first)["ip-minute"][0] == 4
    answers = [client.get("/api/tokens/summary", headers=with_key(f"tp_unknown-{i}")) for i in range(3)]
    assert [a.status_code for a in answers] == [401, 401, 429]
    for answer in answers:
        assert not [h for h in answer.headers.keys() if h.lower().startswith(("x-ratelimit", "ratelimit"))]
    assert ietf_state(client.get("/api/tokens/summary"))["ip-minute"][0] == 3  # none of the three counted
