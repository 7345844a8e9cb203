"""/metrics in one process: token events, sweeper runs, pool gauges, protection, cardinality."""

from __future__ import annotations

import re

import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from service.state import app_state
from service.tokens.sweeper import run_sweep
from tests.helpers import activate, assert_error, user

METRIC_OF = {
    "total": "tokenpool_pool_size",
    "active": "tokenpool_tokens_active",
    "available": "tokenpool_tokens_available",
}


def sample(text: str, name: str, **labels) -> float:
    """The value of one series in exposition text (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_pool_gauges_equal_the_summary(client):
    for _ in range(2):
        activate(client, user())
    text = client.get("/metrics").get_data(as_text=True)
    summary = client.get("/api/tokens/summary").get_json()
    for name in ("total", "active", "available"):
        assert sample(text, METRIC_OF[name]) == summary[name]
    assert sample(text, "tokenpool_database_up") == 1


def test_http_metrics_use_route_templates_never_ids(client):
    lease = activate(client, user()).get_json()
    client.get(f"/api/tokens/{lease['token_id']}")
    client.get(f"/api/tokens/{lease['token_id']}/usages")
    client.get("/scanner/probe/123")
    text = client.get("/metrics").get_data(as_text=True)
    assert lease["token_id"] not in text and lease["user_id"] not in text
    assert 'url_rule="/api/tokens/<token_id>"' in text
    assert 'url_rule="<unmatched>"' in text
    assert "/scanner" not in text


def test_metrics_content_type_names_its_charset_once(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=...; charset=utf-8
    assert r.headers["Content-Type"].count("charset") == 1


# what Prometheus 2.x and 3.x send (scrape_protocols' default order)
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def test_prometheus_gets_openmetrics_with_every_family_including_the_scrape_time_gauges(client):
    activate(client, user())
    plain = client.get("/metrics").get_data(as_text=True)
    r = client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith(OPENMETRICS.split(";")[0])
    assert r.headers["Vary"] == "Accept"  # a cache between keeps the two formats apart
    families = {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}  # parses, # EOF
    for name in ("tokenpool_pool_size", "tokenpool_tokens_active", "tokenpool_database_up"):
        assert families[name].samples[0].value == sample(plain, name), name
    assert "flask_http_request_duration_seconds" in families
    assert families["tokenpool_activations"].type == "counter"  # OpenMetrics names a counter without _total


def test_name_filter_keeps_only_the_families_asked_for(client):
    text = client.get("/metrics?name[]=tokenpool_pool_size&name[]=flask_exporter_info").get_data(as_text=True)
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    assert names == {"tokenpool_pool_size", "flask_exporter_info"}


def test_health_and_metrics_are_not_api_traffic(client):
    for path in ("/healthz", "/health/live", "/metrics", "/openapi.json"):
        client.get(path)
    text = client.get("/metrics").get_data(as_text=True)
    assert "healthz" not in text and 'url_rule="/metrics"' not in text


def test_activation_results_and_evictions_are_counted(client, clock):
    for _ in range(6):  # pool of 5: the sixth evicts
        activate(client, user())
        clock.advance(1)
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        sample(text, "tokenpool_activations_total", result="success", reason="available", pool="default") == 5
    )
    assert (
        sample(text, "tokenpool_activations_total", result="success", reason="evicted", pool="default") == 1
    )
    assert sample(text, "tokenpool_releases_total", reason="evicted", pool="default") == 1


def test_sweeper_runs_are_counted(app, client, clock):
    activate(client, user())
    assert (
        client.post("/api/pools", json={"name": "gpu", "size": 2, "lifetime_seconds": 60}).status_code == 201
    )
    for _ in range(2):
        assert client.post("/api/pools/gpu/tokens/activate", json={"user_id": user()}).status_code == 200
    clock.advance(1000)
    assert run_sweep(app).expired_by_pool == {"default": 1, "gpu": 2}
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "tokenpool_sweeper_runs_total", result="success") == 1
    assert sample(text, "tokenpool_releases_total", reason="expired", pool="default") == 1
    assert sample(text, "tokenpool_releases_total", reason="expired", pool="gpu") == 2
    assert 'tokenpool_releases_total{pool=""' not in text  # the sweep names each lease's pool
    assert sample(text, "tokenpool_sweeper_last_run_timestamp_seconds") > 1.7e9


@pytest.mark.options(METRICS_TOKEN="scrape-me")
def test_metrics_token_protects_the_endpoint(database_url):
    from tests.conftest import make_app

    app = make_app(database_url, METRICS_TOKEN="scrape-me")
    client = app.test_client()
    assert_error(client.get("/metrics"), 401, "UNAUTHORIZED")
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED")
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
    # the scheme in any case (RFC 7235), as for API keys; the token exactly
    assert client.get("/metrics", headers={"Authorization": "bearer scrape-me"}).status_code == 200
    for sent in ("Bearer Scrape-me", "Bearer scrape-me2", "scrape-me", "Basic scrape-me"):
        assert_error(client.get("/metrics", headers={"Authorization": sent}), 401, "UNAUTHORIZED")


def test_wrong_metrics_tokens_are_counted_and_spend_the_failed_auth_budget(database_url):
    from tests.conftest import make_app

    app = make_app(
        database_url,
        METRICS_TOKEN="scrape-me",
        ENABLE_RATE_LIMITING=True,
        AUTH_FAILURE_RATE_LIMIT="2/minute",
    )
    client = app.test_client()
    for _ in range(2):
        assert_error(client.get("/metrics", headers={"Authorization": "Bearer guess"}), 401, "UNAUTHORIZED")
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer guess"}), 429, "RATE_LIMITED")
    assert app_state(app).metrics.auth_failures.labels("metrics_token")._value.get() == 3


def test_metrics_can_be_switched_off(database_url):
    from tests.conftest import make_app

    app = make_app(database_url, METRICS_ENABLED=False)
    assert_error(app.test_client().get("/metrics"), 404, "NOT_FOUND")


def test_every_metric_the_deploy_files_use_is_exported(database_url, clock):
    from service.db import run_transaction
    from service.pools import service as pools
    from service.tokens.sweeper import run_sweep as sweep
    from tests.conftest import make_app, reset_database
    from tests.deploy.exported_metrics import EXPORTED_METRICS

    app = make_app(database_url, ENABLE_RATE_LIMITING=True, RATE_LIMIT_PER_MINUTE=8, TOKEN_CLOCK=clock)

    def boom():
        raise RuntimeError("for the exceptions counter")

    app.add_url_rule("/api/boom", "boom", boom)
    reset_database(app)
    client = app.test_client()
    for _ in range(6):  # pool of 5: the sixth evicts
        activate(client, user())
    client.post("/api/tokens/activate", json={"user_id": "bad"})
    client.get("/api/boom")
    with app.app_context():  # a queue pool, for its queue's length (not through the rate limit)
        run_transaction(pools.create, {"name": "q", "size": 1, "lifetime_seconds": 60, "policy": "queue"})
    assert client.get("/api/tokens/summary").status_code == 429
    sweep(app)
    text = client.get("/metrics").get_data(as_text=True)
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    assert EXPORTED_METRICS <= names, sorted(EXPORTED_METRICS - names)


def test_http_metrics_come_from_prometheus_flask_exporter(app, client):
    from prometheus_flask_exporter import PrometheusMetrics

    assert isinstance(app_state(app).exporter, PrometheusMetrics)
    client.get("/api/tokens/summary")
    client.open("/api/tokens/summary", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "flask_http_request_total", method="GET", status="200") >= 1
    assert sample(text, "flask_http_request_total", method="other", status="405") == 1
    assert 'flask_exporter_info{version="' in text
    assert "BREW" not in text


def test_a_hook_besides_the_exporter_sees_the_method_as_sent(app, client):
    seen = []
    app.after_request(lambda response: seen.append(__import__("flask").request.method) or response)
    client.open("/api/tokens/summary", method="BREW")
    assert seen == ["BREW"]


def test_pool_connections_by_state(app, client):
    for _ in range(3):
        client.get("/api/tokens/summary")
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "tokenpool_db_pool_connections", state="in_use") == 0  # between requests
    assert sample(text, "tokenpool_db_pool_connections", state="idle") >= 1
    engine_pool = app.extensions["sqlalchemy"].engines[None].pool
    assert sample(text, "tokenpool_db_pool_connections", state="idle") == engine_pool.checkedin()
    if hasattr(engine_pool, "_max_overflow"):
        expected = engine_pool.size() + max(engine_pool._max_overflow, 0)
        assert sample(text, "tokenpool_db_pool_connections", state="max") == expected


def test_db_errors_are_counted_by_operation(app, client):
    from sqlalchemy import text as sql
    from sqlalchemy.exc import DBAPIError

    from service.extensions import db

    with app.app_context():
        with pytest.raises(DBAPIError):
            with db.engine.connect() as conn:
                conn.execute(sql("SELECT no_such_column FROM tokens"))
    body = client.get("/metrics").get_data(as_text=True)
    assert sample(body, "tokenpool_db_errors_total", operation="select") == 1


def test_db_operation_labels_are_bounded():
    from service.metrics.database import db_operation

    assert db_operation(None) == "connect"
    assert db_operation("  UPDATE tokens SET x = 1") == "update"
    assert db_operation("VACUUM") == "other" and db_operation("") == "other"
