"""Health states: a stalled sweeper, an unmigrated or unseeded database, the IETF format, the cache."""

from __future__ import annotations

import re
import threading
import time

import pytest
from flask_migrate import upgrade
from sqlalchemy import text

from service.db import run_transaction
from service.extensions import db
from service.health import checks
from service.tokens import service
from service.tokens.sweeper import run_sweep
from tests.conftest import make_app
from tests.helpers import POOL, activate, assert_error, user

# --- the token manager --------------------------------------------------------------


def test_a_stalled_sweeper_turns_token_manager_unhealthy_and_a_new_run_heals_it(app, client, clock):
    interval = app.config["CHECK_INTERVAL_SECONDS"]
    stale = interval * app.config["SWEEPER_STALE_INTERVALS"]
    run_sweep(app)
    swept_at = clock.now
    assert client.get("/health").get_json()["checks"]["token_manager"]["status"] == "healthy"

    clock.advance(stale)  # exactly the limit: still healthy
    assert client.get("/health").get_json()["checks"]["token_manager"]["status"] == "healthy"

    clock.advance(1)  # more than SWEEPER_STALE_INTERVALS intervals without a run
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy"
    manager = body["checks"]["token_manager"]
    assert manager["status"] == "unhealthy"
    assert manager["last_run_at"] == swept_at.isoformat().replace("+00:00", "Z")
    # a stopped sweeper is an alert for humans, not a reason to take the instance out of rotation
    assert client.get("/health/ready").status_code == 200
    assert client.get("/health/live").status_code == 200

    run_sweep(app)
    response = client.get("/health")
    assert response.status_code == 200
    manager = response.get_json()["checks"]["token_manager"]
    assert manager["status"] == "healthy"
    assert manager["last_run_at"] == clock.now.isoformat().replace("+00:00", "Z")


def test_expired_leases_are_counted_available_in_the_tokens_check(app, client, clock):
    for _ in range(3):
        activate(client, user())
    clock.advance(app.config["TOKEN_LIFETIME_SECONDS"] + 1)
    run_sweep(app)
    tokens = client.get("/health").get_json()["checks"]["tokens"]
    assert (tokens["active"], tokens["available"]) == (0, POOL)


# --- before migrations and before seeding ---------------------------------------------


def _assert_not_ready(client, failing: str, error_fragment: str) -> None:
    for path in ("/health/ready", "/health/readiness", "/ready"):
        body = assert_error(client.get(path), 503, "SERVICE_UNAVAILABLE", f"Not ready: {failing}")
        assert body["details"]["failed_checks"] == [failing]
        found = body["details"]["checks"]
        assert found["database"]["status"] == "healthy"  # the database answered; the schema/pool did not
        assert found[failing]["status"] == "unhealthy"
        assert error_fragment in found[failing]["error"]
    body = assert_error(client.get("/health/startup"), 503, "SERVICE_UNAVAILABLE")
    assert body["details"]["failed_checks"] == [failing]
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unhealthy"
    assert error_fragment in response.get_json()["checks"]["database"]["error"]
    assert client.get("/health/live").status_code == 200
    assert client.get("/healthz").status_code == 200


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "empty.sqlite3")
    return request.getfixturevalue("fresh_pg_database")


def test_readiness_is_503_before_migrations_and_before_seeding(empty_database_url):
    app = make_app(empty_database_url, POOL_SIZE=2, POOL_MAX_OVERFLOW=2)
    client = app.test_client()
    try:
        _assert_not_ready(client, "schema", "not migrated")

        with app.app_context():
            upgrade()
        _assert_not_ready(client, "pool", "not seeded")

        with app.app_context():
            run_transaction(service.seed, POOL)
        assert client.get("/health/ready").status_code == 200
        assert client.get("/health/startup").status_code == 200
    finally:
        with app.app_context():
            db.engine.dispose()


def test_readiness_is_503_when_the_schema_is_behind_the_code(app, client):
    with app.app_context(), db.engine.begin() as conn:
        head = conn.scalar(text("SELECT version_num FROM alembic_version"))
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    try:
        body = assert_error(client.get("/health/ready"), 503, "SERVICE_UNAVAILABLE", "Not ready: schema")
        schema = body["details"]["checks"]["schema"]
        assert schema["error"] == "schema is not at the migration head"
        assert (schema["schema_revision"], schema["head_revision"]) == ("older", head)
    finally:
        with app.app_context(), db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert client.get("/health/ready").status_code == 200


def test_startup_stays_started_once_it_has_passed(app, client):
    assert client.get("/health/startup").status_code == 200
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM tokens"))
    assert client.get("/health/ready").status_code == 503  # readiness follows the pool...
    assert client.get("/health/startup").status_code == 200  # ...start-up is done for good


# --- application/health+json ----------------------------------------------------------

HEALTH_JSON = {"Accept": "application/health+json"}
CHECK_KEY = re.compile(r"^[a-z_]+:[a-zA-Z]+$")


def test_health_json_shape(app, client):
    run_sweep(app)
    activate(client, user())
    plain = client.get("/health").get_json()
    response = client.get("/health", headers=HEALTH_JSON)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/health+json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json(force=True)
    assert body["status"] == "pass"
    assert body["serviceId"] == "tokenpool" and body["version"] == plain["version"]
    assert set(body["checks"]) == {
        "database:responseTime",
        "redis:responseTime",
        "token_manager:lastRun",
        "tokens:utilization",
        "memory:rss",
        "disk:free",
        "log_files:free",
        "metrics_folder:free",
    }
    for key, entries in body["checks"].items():
        assert CHECK_KEY.match(key)
        assert isinstance(entries, list) and len(entries) == 1
        assert entries[0]["status"] in ("pass", "warn", "fail")
        assert entries[0]["time"].endswith("Z")
    # the same facts as the plain report
    observed = {key.split(":")[0]: entries[0].get("observedValue") for key, entries in body["checks"].items()}
    assert observed["tokens"] == plain["checks"]["tokens"]["utilization"]
    assert observed["token_manager"] == plain["checks"]["token_manager"]["last_run_at"]
    assert body["checks"]["database:responseTime"][0]["observedValue"] >= 0


def test_health_json_also_on_detailed_path(client):
    response = client.get("/health/detailed", headers={"Accept": "application/health+json, application/json"})
    assert response.headers["Content-Type"] == "application/health+json"


def test_health_json_warn_for_degraded(past_start_up, client):
    body = client.get("/health", headers=HEALTH_JSON).get_json(force=True)  # the sweeper never ran
    assert body["status"] == "warn"
    assert body["checks"]["token_manager:lastRun"][0]["status"] == "warn"


def test_health_json_fail_is_503_with_output(app, client):
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM tokens"))
    response = client.get("/health", headers=HEALTH_JSON)
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/health+json"
    body = response.get_json(force=True)
    assert body["status"] == "fail"
    database = body["checks"]["database:responseTime"][0]
    assert database["status"] == "fail" and "not seeded" in database["output"]


def test_plain_json_without_the_health_accept_header(client):
    assert client.get("/health", headers={"Accept": "application/json"}).content_type == "application/json"


# --- caching --------------------------------------------------------------------------


@pytest.fixture
def count_database_checks(monkeypatch):
    calls = []
    real = checks.database

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(checks, "database", counting)
    return calls


@pytest.mark.options(HEALTH_CACHE_SECONDS=2)
def test_detailed_report_is_cached(client, count_database_checks):
    first = client.get("/health").get_json()
    second = client.get("/health/detailed").get_json()
    assert len(count_database_checks) == 1
    assert second["timestamp"] == first["timestamp"]
    client.get("/health", headers=HEALTH_JSON)
    assert len(count_database_checks) == 1  # the IETF view is built from the same cached report


@pytest.mark.options(HEALTH_CACHE_SECONDS=2)
def test_a_stampede_costs_one_round_of_checks(app, count_database_checks):
    statuses = []

    def probe():
        statuses.append(app.test_client().get("/health").status_code)

    threads = [threading.Thread(target=probe) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(statuses) == 12 and set(statuses) == {200}
    assert len(count_database_checks) == 1


@pytest.mark.options(HEALTH_CACHE_SECONDS=0.2)
def test_the_cache_expires(client, count_database_checks):
    client.get("/health")
    time.sleep(0.3)
    client.get("/health")
    assert len(count_database_checks) == 2


@pytest.mark.options(HEALTH_CACHE_SECONDS=2)
def test_readiness_is_not_served_from_the_detailed_cache(client, count_database_checks):
    client.get("/health")
    client.get("/health/ready")
    client.get("/health/ready")
    assert len(count_database_checks) == 3
