"""Per API key limits: each key's own minute and hour windows, the defaults, the per-window headers."""

from __future__ import annotations

import time

import pytest

from tests.observability.test_metrics import sample
from tests.protection.support import assert_rate_limited, create_key, with_key

DEFAULTS = {
    "API_KEY_RATE_LIMIT_PER_MINUTE": 50,
    "API_KEY_RATE_LIMIT_PER_HOUR": 500,
    "RATE_LIMIT_PER_MINUTE": 3,
}


def window_headers(r, window: str) -> tuple[int, int, int]:
    """(limit, remaining, reset epoch) of X-RateLimit-*-Minute or -Hour."""
    return tuple(int(r.headers[f"X-RateLimit-{part}-{window}"]) for part in ("Limit", "Remaining", "Reset"))


@pytest.mark.parametrize("style", ["x-api-key", "bearer"])
def test_own_per_minute_limit_answers_429_on_the_third_request(build, style):
    app = build(**DEFAULTS)
    key = create_key(app, "tight-minute", "client", "--per-minute", "2")
    client = app.test_client()
    for n in (1, 2):
        r = client.get("/api/tokens/summary", headers=with_key(key, style))
        assert r.status_code == 200
        limit, remaining, reset = window_headers(r, "Minute")
        assert (limit, remaining) == (2, 2 - n)
        assert time.time() < reset <= time.time() + 62
        limit, remaining, reset = window_headers(r, "Hour")
        assert (limit, remaining) == (500, 500 - n)
        assert time.time() + 60 < reset <= time.time() + 3602
    r = client.get("/api/tokens/summary", headers=with_key(key, style))
    assert_rate_limited(r)
    assert window_headers(r, "Minute")[:2] == (2, 0)
    # the other header form names the same key, so the same bucket
    other = "bearer" if style == "x-api-key" else "x-api-key"
    assert_rate_limited(
        client.post("/api/tokens/activate", json={"user_id": "x"}, headers=with_key(key, other))
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "tokenpool_rate_limit_hits_total", limit="api_key_minute") == 2
    assert sample(text, "tokenpool_rate_limit_hits_total", limit="ip") == 0
    assert "tight-minute" not in text and key not in text


def test_own_per_hour_limit_answers_429_on_the_fourth_request(build):
    app = build(**DEFAULTS)
    key = create_key(app, "tight-hour", "client", "--per-minute", "100", "--per-hour", "3")
    client = app.test_client()
    for n in (1, 2, 3):
        r = client.get("/api/tokens/summary", headers=with_key(key))
        assert r.status_code == 200
        assert window_headers(r, "Minute")[:2] == (100, 100 - n)
        assert window_headers(r, "Hour")[:2] == (3, 3 - n)
    r = client.get("/api/tokens/summary", headers=with_key(key))
    assert_rate_limited(r, max_seconds=3601)
    assert window_headers(r, "Hour")[:2] == (3, 0)
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "tokenpool_rate_limit_hits_total", limit="api_key_hour") == 1


def test_key_without_overrides_uses_the_configured_defaults(build):
    app = build(**(DEFAULTS | {"API_KEY_RATE_LIMIT_PER_MINUTE": 4}))
    key = create_key(app, "plain", "client")
    client = app.test_client()
    for n in range(1, 5):
        r = client.get("/api/tokens/summary", headers=with_key(key))
        assert r.status_code == 200
        assert window_headers(r, "Minute")[:2] == (4, 4 - n)
        assert window_headers(r, "Hour")[:2] == (500, 500 - n)
    assert_rate_limited(client.get("/api/tokens/summary", headers=with_key(key)))


def test_each_key_has_its_own_bucket(build):
    app = build(**DEFAULTS)
    first = create_key(app, "first", "client", "--per-minute", "1")
    second = create_key(app, "second", "client", "--per-minute", "1")
    client = app.test_client()
    assert client.get("/api/tokens/summary", headers=with_key(first)).status_code == 200
    assert_rate_limited(client.get("/api/tokens/summary", headers=with_key(first)))
    assert client.get("/api/tokens/summary", headers=with_key(second)).status_code == 200


def test_keyed_callers_are_not_subject_to_the_ip_limit(build):
    app = build(**DEFAULTS)  # 3 per minute per IP
    key = create_key(app, "busy", "client")
    client = app.test_client()
    for _ in range(10):
        r = client.get("/api/tokens/summary", headers=with_key(key))
        assert r.status_code == 200
        assert "X-RateLimit-Limit-Minute" in r.headers
    # ... and did not spend the IP's budget either
    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    assert_rate_limited(client.get("/api/tokens/summary"))
    assert client.get("/api/tokens/summary", headers=with_key(key)).status_code == 200


def test_a_key_has_one_bucket_across_endpoints(build):
    app = build(**DEFAULTS)
    key = create_key(app, "spread", "client", "--per-minute", "2")
    client = app.test_client()
    assert client.get("/api/tokens/summary", headers=with_key(key)).status_code == 200
    assert client.get("/api/tokens", headers=with_key(key)).status_code == 200
    assert_rate_limited(client.post("/api/tokens/activate", json={"user_id": "x"}, headers=with_key(key)))
