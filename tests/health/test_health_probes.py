"""Every health path when all is well: status codes, bodies, headers, no secrets, no API key.

Runs on SQLite and on PostgreSQL (the `app` fixture).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from service.extensions import db
from service.health import checks
from service.models import SweeperState
from service.state import app_state
from service.tokens.sweeper import run_sweep
from tests.helpers import POOL, activate, assert_error, user

QUICK = ["/healthz", "/health/quick"]
LIVE = ["/health/live", "/health/liveness", "/live"]
READY = ["/health/ready", "/health/readiness", "/ready"]
DETAILED = ["/health", "/health/detailed"]
EVERY_PATH = QUICK + LIVE + READY + ["/health/startup"] + DETAILED
CHECK_NAMES = {
    "database",
    "redis",
    "token_manager",
    "tokens",
    "memory",
    "disk",
    "log_files",
    "metrics_folder",
}
sweeper_state = SweeperState.__table__
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def swept(app):
    """The token manager has just run, so every check is healthy."""
    run_sweep(app)
    return app


@pytest.mark.parametrize("path", QUICK)
def test_quick_probes_answer_ok(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("path", LIVE)
def test_liveness_probes_answer_alive(client, path):
    response = client.get(path)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "alive"
    assert isinstance(body["uptime_seconds"], int | float) and body["uptime_seconds"] >= 0


@pytest.mark.parametrize("path", READY)
def test_readiness_probes_answer_ready(client, path):
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["draining"] == {"status": "healthy"}
    database = body["checks"]["database"]
    assert database["status"] == "healthy"
    assert database["latency_ms"] >= 0
    assert database["schema_revision"]


def test_startup_probe_answers_started(client):
    response = client.get("/health/startup")
    assert response.status_code == 200
    assert response.get_json() == {"status": "started"}


@pytest.mark.parametrize("path", DETAILED)
def test_detailed_health_is_healthy_with_every_check(swept, client, clock, path):
    response = client.get(path)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy", body
    assert set(body["checks"]) == CHECK_NAMES
    assert all(check["status"] == "healthy" for check in body["checks"].values()), body["checks"]
    assert ISO_Z.match(body["timestamp"])
    assert body["version"] and body["environment"] == "testing"
    assert body["uptime_seconds"] >= 0
    assert body["checks"]["database"]["latency_ms"] >= 0
    redis = body["checks"]["redis"]
    assert (redis["status"], redis["configured"]) == ("healthy", False)
    manager = body["checks"]["token_manager"]
    assert manager["last_run_at"] == clock.now.isoformat().replace("+00:00", "Z")
    assert manager["interval_seconds"] == swept.config["CHECK_INTERVAL_SECONDS"]
    assert body["checks"]["memory"]["rss_mb"] > 0
    assert body["checks"]["disk"]["free_mb"] > 0
    assert "details" not in body


def test_details_true_adds_configuration_facts(swept, client):
    body = client.get("/health?details=true").get_json()
    details = body["details"]
    # memory, cache, performance and database_pool: tests/health/test_health_details.py
    assert {k: details.pop(k) for k in ("memory", "cache", "performance", "database_pool")}
    pools = details.pop("pools")
    assert {k: pools["default"][k] for k in ("size", "policy", "total", "active", "available", "queued")} == {
        "size": POOL,
        "policy": "evict",
        "total": POOL,
        "active": 0,
        "available": POOL,
        "queued": 0,
    }
    assert details == {
        "pool_size_configured": POOL,
        "lifetime_seconds": swept.config["TOKEN_LIFETIME_SECONDS"],
        "check_interval_seconds": swept.config["CHECK_INTERVAL_SECONDS"],
        "sweeper_in_process": False,
    }


def test_tokens_check_matches_the_summary_api(client):
    for _ in range(2):
        assert activate(client, user()).status_code in (200, 201)
    tokens = client.get("/health").get_json()["checks"]["tokens"]
    summary = client.get("/api/tokens/summary").get_json()
    for key in ("active", "available", "total", "utilization"):
        assert tokens[key] == summary[key], key
    assert (tokens["active"], tokens["available"], tokens["total"]) == (2, POOL - 2, POOL)


def test_a_fresh_instance_is_healthy_while_its_first_sweep_is_due(app, client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["checks"]["token_manager"] == {
        "status": "healthy",
        "starting": True,
        "last_run_at": None,
        "interval_seconds": app.config["CHECK_INTERVAL_SECONDS"],
    }


def test_a_sweep_older_than_the_start_is_no_finding_during_start_up(app, client, clock):
    with app.app_context(), db.engine.begin() as conn:  # the last sweep of an instance long gone
        conn.execute(sweeper_state.update().values(last_run_at=clock.now - timedelta(days=1)))
    manager = client.get("/health").get_json()["checks"]["token_manager"]
    assert (manager["status"], manager["starting"]) == ("healthy", True)

    app_state(app).health.built_monotonic -= app.config["CHECK_INTERVAL_SECONDS"] + 1
    assert client.get("/health").get_json()["checks"]["token_manager"]["status"] == "unhealthy"


def test_a_sweeper_that_never_ran_after_start_up_is_degraded_not_unhealthy(past_start_up, client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["token_manager"]["status"] == "degraded"
    assert body["checks"]["token_manager"]["last_run_at"] is None
    assert "starting" not in body["checks"]["token_manager"]


def test_a_sweep_since_the_start_ends_the_start_up_grace(app, client, clock):
    run_sweep(app)
    clock.advance(app.config["CHECK_INTERVAL_SECONDS"] * app.config["SWEEPER_STALE_INTERVALS"] + 1)
    assert client.get("/health").get_json()["checks"]["token_manager"]["status"] == "unhealthy"


@pytest.mark.options(MAX_ACTIVE_TOKENS=20)
def test_tokens_degrade_above_ninety_percent_utilization_and_when_none_is_left(swept, client):
    for _ in range(18):
        activate(client, user())
    assert client.get("/health").get_json()["checks"]["tokens"]["status"] == "healthy"  # exactly 90 %
    activate(client, user())
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["checks"]["tokens"]["utilization"] == 0.95
    assert body["checks"]["tokens"]["status"] == "degraded"
    assert body["status"] == "degraded"
    activate(client, user())
    tokens = client.get("/health").get_json()["checks"]["tokens"]
    assert tokens["available"] == 0 and tokens["status"] == "degraded"
    assert client.get("/health/ready").status_code == 200  # a full pool still takes traffic


@pytest.mark.parametrize("path", EVERY_PATH)
def test_probe_answers_are_never_cached(swept, client, path):
    assert client.get(path).headers["Cache-Control"] == "no-store"


def test_even_failing_probe_answers_are_not_cached(client):
    checks.draining.set()
    try:
        response = client.get("/health/ready")
    finally:
        checks.draining.clear()
    assert response.status_code == 503
    assert response.headers["Cache-Control"] == "no-store"


def test_draining_fails_readiness_only(client):
    checks.draining.set()
    try:
        ready = client.get("/health/ready")
        live = client.get("/health/live")
        quick = client.get("/healthz")
    finally:
        checks.draining.clear()
    body = assert_error(ready, 503, "SERVICE_UNAVAILABLE", "Not ready: draining")
    assert body["details"]["failed_checks"] == ["draining"]
    assert live.status_code == 200 and quick.status_code == 200
    assert client.get("/health/ready").status_code == 200  # not sticky once cleared


SECRET_REDIS_URL = "redis://:redis-pass-xyz@127.0.0.1:1/0"  # nothing listens on port 1: degraded


@pytest.mark.options(REDIS_URL=SECRET_REDIS_URL, SECRET_KEY="flask-secret-xyz", ADMIN_API_KEY="admin-key-xyz")
def test_no_secret_or_hostname_in_any_body(swept, client):
    database_url = swept.config["SQLALCHEMY_DATABASE_URI"]
    forbidden = [
        database_url,
        database_url.split("://", 1)[1],  # the URL without its scheme
        database_url.rsplit("/", 1)[-1],  # the database name or the SQLite file name
        SECRET_REDIS_URL,
        "redis-pass-xyz",
        "flask-secret-xyz",
        "admin-key-xyz",
        "127.0.0.1",
        "localhost",
        "password",
        "postgres@",
        "postgresql",
        "sqlite:",
    ]
    responses = [client.get(path) for path in EVERY_PATH]
    responses.append(client.get("/health?details=true"))
    responses.append(client.get("/health", headers={"Accept": "application/health+json"}))
    checks.draining.set()
    try:
        responses.append(client.get("/health/ready"))  # an error body too
    finally:
        checks.draining.clear()
    redis_check = responses[-3].get_json()["checks"]["redis"]
    assert redis_check["status"] == "degraded" and redis_check["configured"] is True
    for response in responses:
        text = response.get_data(as_text=True)
        for secret in forbidden:
            assert secret not in text, (response.request.path, secret, text)


@pytest.mark.options(APP_ENV="production", SECRET_KEY="prod-secret", ADMIN_API_KEY="the-admin-key")
@pytest.mark.parametrize("path", EVERY_PATH)
def test_health_needs_no_api_key_in_production(swept, client, path):
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] in ("ok", "alive", "ready", "started", "healthy")


@pytest.mark.options(APP_ENV="production", SECRET_KEY="prod-secret", ADMIN_API_KEY="the-admin-key")
def test_the_admin_key_is_really_enforced_in_that_production_app(client):
    assert_error(client.delete("/api/tokens/active"), 401, "UNAUTHORIZED")
    assert client.get("/health/ready", headers={"X-API-Key": "wrong"}).status_code == 200
