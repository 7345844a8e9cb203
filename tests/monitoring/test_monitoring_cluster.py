"""/api/monitoring under two real gunicorn workers sharing a throwaway Redis: one cluster-wide view."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from service.state import app_state
from tests.conftest import make_app, reset_database
from tests.helpers import activate, user
from tests.procs import Gunicorn, ThrowawayRedis
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MON = "/api/monitoring"
FLUSH_SECONDS = 0.2


def get_json(url: str) -> tuple[int, dict, dict]:
    """A GET on a new connection (urllib never reuses one), so either worker may answer."""
    status, raw, headers = http_get(url, timeout=10)
    return status, json.loads(raw), headers


def post_json(url: str, body: dict) -> tuple[int, dict]:
    status, raw, _ = _post(url, body)
    return status, json.loads(raw)


def _post(url: str, body: dict):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture
def cluster(pg_database):
    """Two gunicorn workers on a seeded PostgreSQL database, figures in a throwaway Redis."""
    redis = ThrowawayRedis().start()
    env = {
        "APP_ENV": "development",
        "DATABASE_URL": pg_database(),
        "REDIS_URL": redis.url,
        "ENABLE_TEST_HOOKS": "true",
        "SLOW_QUERY_MS": "50",
        "SLOW_REQUEST_MS": "100",
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "0",
        "MAX_ACTIVE_TOKENS": "5",
        "ENABLE_RATE_LIMITING": "false",
        "SWEEPER_ENABLED": "false",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "MONITORING_FLUSH_SECONDS": str(FLUSH_SECONDS),
    }
    server = Gunicorn(env, workers=2)
    try:
        yield server.start()
    finally:
        server.stop()
        redis.stop()


def test_counts_are_exact_whichever_worker_served(cluster):
    base = cluster.url
    pids: set[int] = set()
    sent = 0
    # database-stats names the worker that answered; go on until both have served (at least 20)
    while sent < 20 or (len(pids) < 2 and sent < 300):
        status, body, _ = get_json(base + f"{MON}/database-stats")
        assert status == 200 and body["scope"] == "cluster"
        pids.add(body["connection_pool"]["pid"])
        sent += 1
    assert len(pids) == 2, "one worker served every request: the test proves nothing"
    activations = 4
    for _ in range(activations):
        assert post_json(base + "/api/tokens/activate", {"user_id": str(uuid.uuid4())})[0] == 200
    time.sleep(FLUSH_SECONDS * 2.5)  # every worker's buffer has reached Redis
    readers = set()
    for _ in range(8):  # each worker reads the same cluster-wide figures
        status, figures, _ = get_json(base + f"{MON}/metrics?window=5")
        assert status == 200 and figures["scope"] == "cluster"
        routes = figures["routes"]
        assert routes[f"{MON}/database-stats"]["requests"] == sent
        assert routes["/api/tokens/activate"]["requests"] == activations
        assert sum(figures["token_operations"]["activation"]["success"].values()) == activations
        readers.add(json.dumps({k: v for k, v in routes.items() if k != f"{MON}/metrics"}, sort_keys=True))
    assert len(readers) == 1


def test_slow_request_and_statement_and_an_error_are_listed(cluster):
    base = cluster.url
    status, slept, headers = get_json(base + f"{MON}/test/sleep?ms=300")
    assert status == 200 and slept["slept_ms"] == 300
    request_id = headers["X-Request-ID"]

    time.sleep(FLUSH_SECONDS * 2.5)
    status, slow_apis, _ = get_json(base + f"{MON}/slow-apis?limit=10")
    assert status == 200 and slow_apis["scope"] == "cluster"
    (entry,) = [e for e in slow_apis["slow_apis"] if e["request_id"] == request_id]
    assert (entry["method"], entry["route"], entry["status"]) == ("GET", f"{MON}/test/sleep", 200)
    assert entry["duration_ms"] >= 300

    status, slow_queries, _ = get_json(base + f"{MON}/slow-queries?limit=10")
    assert status == 200 and slow_queries["scope"] == "cluster"
    (query,) = [q for q in slow_queries["slow_queries"] if q["request_id"] == request_id]
    assert "pg_sleep" in query["statement"]
    assert "0.3" not in query["statement"] and "300" not in query["statement"]  # no parameter values
    assert query["duration_ms"] >= 300 and query["route"] == f"{MON}/test/sleep"

    status, raw, headers = _post(base + "/api/tokens/activate", {"user_id": "definitely-not-a-uuid"})
    assert status == 400
    error = json.loads(raw)
    assert error["error_code"] == "VALIDATION_ERROR"
    time.sleep(FLUSH_SECONDS * 2.5)
    status, errors, _ = get_json(base + f"{MON}/errors?limit=5")
    assert status == 200 and errors["scope"] == "cluster"
    (listed,) = [e for e in errors["errors"] if e["request_id"] == error["request_id"]]
    assert listed["error_id"] == error["error_id"]
    assert (listed["route"], listed["status"], listed["error_code"]) == (
        "/api/tokens/activate",
        400,
        "VALIDATION_ERROR",
    )
    assert "definitely-not-a-uuid" not in json.dumps(errors)

    logged = []
    for line in cluster.log_lines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # gunicorn's own plain lines
        if isinstance(record, dict) and record.get("error_id") == error["error_id"]:
            logged.append(record)
    # the error's own line, and the access line that names the error it answered
    by_logger = sorted(record["logger"] for record in logged)
    assert by_logger == ["tokenpool.access", "tokenpool.errors"], logged
    assert all(r["request_id"] == error["request_id"] and r["status"] == 400 for r in logged)

    status, figures, _ = get_json(base + f"{MON}/metrics?window=5")
    assert figures["slow_requests"] >= 1 and figures["slow_queries"] >= 1 and figures["client_errors"] == 1


@pytest.mark.parametrize(("flush_seconds", "pipelines"), [(0, 3), (60, 1)])
def test_redis_round_trips_of_requests(sqlite_url, flush_seconds, pipelines):
    """Unbuffered: one pipelined write per API request. Buffered (the default): none per
    request, one pipeline per flush."""
    redis = ThrowawayRedis().start()
    try:
        app = make_app(sqlite_url, REDIS_URL=redis.url, MONITORING_FLUSH_SECONDS=flush_seconds)
        reset_database(app)
        with app.app_context():
            store = app_state(app).monitoring
        assert store.scope == "cluster"
        store = getattr(store, "inner", store)
        trips = []
        direct = store.client.execute_command
        store.client.execute_command = lambda *args, **kw: trips.append(args[0]) or direct(*args, **kw)
        pipeline = store.client.pipeline

        def counted_pipeline(*args, **kwargs):
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute
            pipe.execute = lambda *a, **kw: trips.append("PIPELINE") or execute(*a, **kw)
            return pipe

        store.client.pipeline = counted_pipeline
        client = app.test_client()
        assert activate(client, user()).status_code == 200
        assert activate(client, "nope").status_code == 400
        assert client.get("/api/tokens/summary").status_code == 200
        assert client.get("/healthz").status_code == 200  # not API traffic: no write at all
        if flush_seconds:
            assert trips == []
            app_state(app).monitoring.flush()
        assert trips == ["PIPELINE"] * pipelines
        figures = app.test_client().get(f"{MON}/metrics?window=5").get_json()
        assert figures["scope"] == "cluster" and figures["requests"] == 3
    finally:
        redis.stop()
