"""Label values come from bounded sets: client-chosen methods, paths and headers add no series or keys."""

from __future__ import annotations

import uuid

import pytest
import redis

from service.labels import OTHER, UNMATCHED, bounded_method
from tests.conftest import make_app, reset_database
from tests.procs import ThrowawayRedis

ROUTE = "/api/tokens/summary"


def series(client) -> set[str]:
    """Every series of /metrics (name and labels), values dropped."""
    text = client.get("/metrics").get_data(as_text=True)
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def junk(client, n: int, offset: int = 0) -> None:
    """`n` requests of each kind a client can vary freely: method, path, headers."""
    for i in range(offset, offset + n):
        headers = {
            "X-Request-ID": f"req-{i}-{uuid.uuid4()}",
            "User-Agent": f"scanner/{i}",
            "Accept": f"application/x-{i}",
            "X-Forwarded-For": f"198.51.100.{i % 250}",
            f"X-Junk-{i}": "1",
        }
        client.open(ROUTE, method=f"M{i}X", headers=headers)  # 405
        client.open(ROUTE, method=f"get{i}".lower(), headers=headers)  # 405
        client.get(f"/scan/{i}/{uuid.uuid4()}", headers=headers)  # 404
        client.open(f"/api/tokens/{uuid.uuid4()}/nothing-{i}", method="PUT", headers=headers)  # 404
        client.get(ROUTE, headers=headers)  # 200


def test_hundreds_of_methods_paths_and_headers_add_no_series(sqlite_url):
    app = make_app(sqlite_url, ENABLE_RATE_LIMITING=False)
    reset_database(app)
    client = app.test_client()
    junk(client, 1)  # one of each kind: the series the kinds need
    before = series(client)
    junk(client, 300, offset=1)
    after = series(client)
    assert after == before, sorted(after - before)[:10]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="other"' in text and f'url_rule="{UNMATCHED}"' in text
    assert "M17X" not in text and "get17" not in text and "/scan/" not in text and "scanner" not in text


@pytest.fixture(scope="module")
def redis_server():
    server = ThrowawayRedis().start()
    yield server
    server.stop()


def monitoring_fields(url: str) -> tuple[int, set[str]]:
    """(number of keys, every field of every minute hash) of the monitoring store in Redis."""
    conn = redis.Redis.from_url(url)
    try:
        keys = conn.keys("tokenpool:mon:*")
        fields = set()
        for key in keys:
            if conn.type(key) == b"hash":
                fields |= {f.decode() for f in conn.hkeys(key)}
        return len(keys), fields
    finally:
        conn.close()


def test_the_monitoring_store_keeps_bounded_keys_and_fields(sqlite_url, redis_server):
    redis.Redis.from_url(redis_server.url).flushdb()
    app = make_app(
        sqlite_url, ENABLE_RATE_LIMITING=False, REDIS_URL=redis_server.url, MONITORING_FLUSH_SECONDS=0
    )
    reset_database(app)
    client = app.test_client()
    junk(client, 1)
    keys_before, fields_before = monitoring_fields(redis_server.url)
    junk(client, 200, offset=1)
    keys_after, fields_after = monitoring_fields(redis_server.url)
    assert keys_after <= keys_before + 1  # a new minute may begin meanwhile
    # only latency buckets (14 at most per route) may appear when a request is slower than before
    new = fields_after - fields_before
    assert all("|lat|" in f or f.startswith("lat|") for f in new), sorted(new)
    assert not any("M17X" in f or "/scan/" in f or "nothing-" in f for f in fields_after)
    errors = client.get("/api/monitoring/errors?limit=100").get_json()["errors"]
    assert errors and {e["method"] for e in errors} <= {"GET", "PUT", OTHER}
    assert {e["route"] for e in errors} <= {UNMATCHED, ROUTE}


def test_bounded_values():
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"):
        assert bounded_method(method) == method
    for method in ("get", "M1X", "PROPFIND", "", "GET ", "G\u0130T"):
        assert bounded_method(method) == OTHER
