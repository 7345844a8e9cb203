"""The per-IP application limit: one shared bucket, the 429 answer, exemptions, the metric."""

from __future__ import annotations

import time
import uuid

from tests.helpers import user
from tests.observability.test_metrics import sample
from tests.protection.support import assert_rate_limited

LIMIT = 3


def test_request_after_the_limit_is_429_with_headers_and_json(build):
    client = build(RATE_LIMIT_PER_MINUTE=LIMIT).test_client()
    for remaining in range(LIMIT - 1, -1, -1):
        r = client.get("/api/tokens/summary")
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == str(LIMIT)
        assert r.headers["X-RateLimit-Remaining"] == str(remaining)
    r = client.get("/api/tokens/summary")
    assert_rate_limited(r)
    assert r.headers["X-RateLimit-Limit"] == str(LIMIT)
    assert r.headers["X-RateLimit-Remaining"] == "0"
    reset = int(r.headers["X-RateLimit-Reset"])  # epoch seconds, Retry-After is a delta
    assert time.time() < reset <= time.time() + 62
    assert not any(name.endswith(("-Minute", "-Hour")) for name in r.headers.keys())  # no key, no windows


def test_one_bucket_across_endpoints(build):
    client = build(RATE_LIMIT_PER_MINUTE=LIMIT).test_client()
    assert client.post("/api/tokens/activate", json={"user_id": user()}).status_code == 200
    assert client.get("/api/tokens/summary").status_code == 200
    assert client.get("/api/tokens").status_code == 200
    assert_rate_limited(client.get(f"/api/tokens/{uuid.uuid4()}"))
    assert_rate_limited(client.post("/api/tokens/activate", json={"user_id": user()}))
    assert_rate_limited(client.get("/api/tokens/summary"))


def test_another_ip_has_its_own_bucket(build):
    client = build(RATE_LIMIT_PER_MINUTE=LIMIT).test_client()
    for _ in range(LIMIT):
        assert client.get("/api/tokens/summary").status_code == 200
    assert_rate_limited(client.get("/api/tokens/summary"))
    other = {"REMOTE_ADDR": "192.0.2.44"}
    assert client.get("/api/tokens/summary", environ_base=other).status_code == 200


def test_health_metrics_and_openapi_are_never_limited(build):
    client = build(RATE_LIMIT_PER_MINUTE=LIMIT).test_client()
    for _ in range(LIMIT):
        client.get("/api/tokens/summary")
    assert_rate_limited(client.get("/api/tokens/summary"))
    for path in ("/healthz", "/health/live", "/health/ready", "/live", "/ready", "/metrics", "/openapi.json"):
        for _ in range(LIMIT * 4):
            r = client.get(path)
            assert r.status_code == 200, (path, r.status_code)
            assert "X-RateLimit-Limit" not in r.headers, path
    assert_rate_limited(client.get("/api/tokens/summary"))


def test_429_is_counted_and_logged_by_limit_never_the_ip(build, records):
    app = build(RATE_LIMIT_PER_MINUTE=LIMIT)
    log = records("tokenpool.ratelimit")
    client = app.test_client()
    for _ in range(LIMIT):
        client.get("/api/tokens/summary")
    for _ in range(2):
        assert_rate_limited(client.get("/api/tokens/summary"))
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "tokenpool_rate_limit_hits_total", limit="ip") == 2
    assert "127.0.0.1" not in text
    breaches = log.of(event="rate_limited")
    assert len(breaches) == 2
    assert {(r.key_kind, r.limit) for r in breaches} == {("ip", f"{LIMIT} per 1 minute")}
    assert all("127.0.0.1" not in r.getMessage() for r in breaches)


def test_rate_limiting_off_never_answers_429(build):
    client = build(ENABLE_RATE_LIMITING=False, RATE_LIMIT_PER_MINUTE=1).test_client()
    for _ in range(5):
        r = client.get("/api/tokens/summary")
        assert r.status_code == 200
        assert "X-RateLimit-Limit" not in r.headers


def test_the_api_index_counts_against_the_ip_limit(build):
    app = build(RATE_LIMIT_PER_MINUTE=2)
    client = app.test_client()
    assert client.get("/api").status_code == 200
    assert client.get("/api/tokens/summary").headers["X-RateLimit-Remaining"] == "0"
    assert_rate_limited(client.get("/api"))


def test_404_and_405_count_against_the_ip_limit(build):
    client = build(RATE_LIMIT_PER_MINUTE=5).test_client()
    answers = [client.get(f"/nothing/{i}").status_code for i in range(3)]
    answers += [client.open("/api/tokens/summary", method=m).status_code for m in ("DELETE", "M1X")]
    assert answers == [404, 404, 404, 405, 405]
    for _ in range(40):
        assert_rate_limited(client.get(f"/nothing/{uuid.uuid4()}"))
        assert_rate_limited(client.open("/api/tokens/summary", method="M2X"))
    assert_rate_limited(client.get("/api/tokens/summary"))
    # and the other way round: a spent budget is not refilled by unknown routes
    other = {"REMOTE_ADDR": "192.0.2.45"}
    for _ in range(5):
        assert client.get("/api/tokens/summary", environ_base=other).status_code == 200
    r = client.delete("/api/tokens/summary", environ_base=other)
    assert_rate_limited(r)
    assert r.headers["X-RateLimit-Remaining"] == "0"


def test_in_process_limits_with_several_workers_warn(build, caplog):
    warning = "rate limits use memory:// with several workers"
    build(RATE_LIMIT_PER_MINUTE=LIMIT, WEB_CONCURRENCY=3)
    assert warning in caplog.text
    caplog.clear()
    build(RATE_LIMIT_PER_MINUTE=LIMIT, WEB_CONCURRENCY=1)
    assert warning not in caplog.text
