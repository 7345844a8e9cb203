"""Slow requests and statements are logged whether or not the metrics are on."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_app, reset_database


@pytest.mark.parametrize("metrics", [True, False])
def test_slow_request_and_query_lines_do_not_depend_on_metrics(postgres_url, tmp_path, metrics):
    path = tmp_path / "app.log"
    app = make_app(
        postgres_url,
        METRICS_ENABLED=metrics,
        ENABLE_TEST_HOOKS=True,
        SLOW_QUERY_MS=50,
        SLOW_REQUEST_MS=100,
        LOG_FILE=str(path),
    )
    reset_database(app)
    client = app.test_client()
    slept = client.get("/api/monitoring/test/sleep?ms=150", headers={"X-Request-ID": "slow-1"})
    assert slept.status_code == 200
    slow = [json.loads(line) for line in path.read_text().splitlines()]
    slow = [x for x in slow if x["logger"] == "tokenpool.slow" and x["request_id"] == "slow-1"]
    # a loaded machine may make another statement of the request pass 50 ms too: the
    # pg_sleep one must be there, with its parameters left out
    assert {x["event"] for x in slow} == {"slow_query", "slow_request"}
    query = next(x for x in slow if x["event"] == "slow_query" and "pg_sleep" in x["statement"])
    assert "0.15" not in query["statement"]
    assert query["duration_ms"] >= 150
    [request] = [x for x in slow if x["event"] == "slow_request"]
    assert request["route"] == "/api/monitoring/test/sleep" and request["duration_ms"] >= 150
    assert (client.get("/metrics").status_code == 200) is metrics
