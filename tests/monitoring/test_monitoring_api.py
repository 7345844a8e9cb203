"""/api/monitoring in process (no Redis): scope, figures, validation, admin keys, stats, test hook."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from service import create_app
from service.config import ConfigError
from service.extensions import db
from service.monitoring.figures import ACTIVITY
from service.monitoring.schemas import MinuteActivity
from tests.conftest import head_revision, make_app, reset_database
from tests.helpers import POOL, activate, assert_error, release, user
from tests.procs import free_port

MON = "/api/monitoring"
ROUTES = [
    ("GET", f"{MON}/metrics"),
    ("GET", f"{MON}/activity"),
    ("GET", f"{MON}/slow-queries"),
    ("GET", f"{MON}/slow-apis"),
    ("GET", f"{MON}/errors"),
    ("GET", f"{MON}/report"),
    ("GET", f"{MON}/database-stats"),
    ("GET", f"{MON}/cache-stats"),
    ("POST", f"{MON}/cache/clear"),
]


def get(client, path: str, **kwargs) -> dict:
    response = client.get(MON + path, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def wipe_keys(app) -> None:
    """No API keys: the admin routes of testing apps stay open only while no key exists."""
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_keys"))


def create_key(app, name: str, role: str) -> str:
    result = app.test_cli_runner().invoke(args=["apikeys", "create", "--name", name, "--role", role])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


# --- scope and figures without Redis -------------------------------------------------


def test_every_endpoint_answers_with_process_scope_without_redis(client, app):
    assert not app.config.get("REDIS_URL")
    for method, path in ROUTES:
        response = client.open(path, method=method)
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        body = response.get_json()
        assert body["scope"] == "process", path
        assert body["generated_at"].endswith("Z")


def test_requests_show_up_in_the_window_counts(client):
    k = 7
    for _ in range(k):
        assert client.get("/api/tokens/summary").status_code == 200
    assert activate(client, user()).status_code == 200
    assert activate(client, user()).status_code == 200
    assert activate(client, "not-a-uuid").status_code == 400
    client.get("/healthz")  # probes are not API traffic
    client.get("/openapi.json")
    figures = get(client, "/metrics?window=5")
    assert figures["window_minutes"] == 5
    routes = figures["routes"]
    assert routes["/api/tokens/summary"]["requests"] == k
    assert routes["/api/tokens/activate"]["requests"] == 3
    assert not [route for route in routes if not route.startswith("/api/")]
    assert figures["requests"] == sum(r["requests"] for r in routes.values()) == k + 3
    assert figures["client_errors"] == 1 and figures["errors"] == 0 and figures["error_rate"] == 0.0
    assert sum(figures["token_operations"]["activation"]["success"].values()) == 2
    assert figures["queries"] > 0 and figures["latency_ms"]["p50"] is not None
    # the metrics request itself is counted afterwards, under its own route
    assert get(client, "/metrics?window=5")["routes"][f"{MON}/metrics"]["requests"] == 1


def test_an_error_is_listed_newest_first_with_its_error_id(client):
    bodies = [assert_error(activate(client, f"bad-{i}"), 400, "VALIDATION_ERROR") for i in range(3)]
    answer = get(client, "/errors?limit=2")
    assert answer["limit"] == 2
    assert [e["error_id"] for e in answer["errors"]] == [bodies[2]["error_id"], bodies[1]["error_id"]]
    entry = answer["errors"][0]
    assert entry["request_id"] == bodies[2]["request_id"]
    assert (entry["method"], entry["route"], entry["status"]) == ("POST", "/api/tokens/activate", 400)
    assert entry["error_code"] == "VALIDATION_ERROR" and entry["time"].endswith("Z")
    assert "bad-2" not in str(entry)  # the route template, no input values


def test_an_unreachable_redis_costs_the_figures_not_the_requests(sqlite_url):
    app = make_app(sqlite_url, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    reset_database(app)
    client = app.test_client()
    assert client.get("/api/tokens/summary").status_code == 200
    assert activate(client, user()).status_code == 200
    for path in ("/metrics", "/slow-queries", "/slow-apis", "/errors", "/report"):
        assert_error(client.get(MON + path), 503, "SERVICE_UNAVAILABLE")
    assert get(client, "/database-stats")["scope"] == "cluster"  # needs no Redis


# --- validation ------------------------------------------------------------------------

BAD_PARAMETERS = [
    ("metrics", "window", "0", 1, 1440),
    ("metrics", "window", "1441", 1, 1440),
    ("metrics", "window", "abc", 1, 1440),
    ("metrics", "window", "", 1, 1440),
    ("report", "window", "1", 2, 1440),
    ("report", "window", "1441", 2, 1440),
    ("slow-queries", "limit", "0", 1, 100),
    ("slow-queries", "limit", "101", 1, 100),
    ("slow-apis", "limit", "0", 1, 100),
    ("slow-apis", "limit", "x", 1, 100),
    ("errors", "limit", "101", 1, 100),
    ("errors", "limit", "-3", 1, 100),
]


@pytest.mark.parametrize("endpoint,name,value,low,high", BAD_PARAMETERS)
def test_bad_parameters_are_400_in_the_common_shape(client, endpoint, name, value, low, high):
    response = client.get(f"{MON}/{endpoint}?{name}={value}")
    body = assert_error(
        response, 400, "VALIDATION_ERROR", f"Invalid {name}. Must be an integer between {low} and {high}."
    )
    assert body["details"] == {"field": name}


@pytest.mark.parametrize("query", ["window=1", "window=1440"])
def test_window_bounds_are_accepted(client, query):
    assert get(client, f"/metrics?{query}")["window_minutes"] == int(query.split("=")[1])


# --- admin keys in production ---------------------------------------------------------


@pytest.fixture
def production(database_url):
    app = make_app(database_url, APP_ENV="production", SECRET_KEY="s", ENABLE_RATE_LIMITING=False)
    reset_database(app)
    wipe_keys(app)
    yield app
    wipe_keys(app)


def test_production_needs_an_admin_key(production):
    client = production.test_client()
    client_key = create_key(production, "monitoring-client", "client")
    admin_key = create_key(production, "monitoring-admin", "admin")
    for method, path in ROUTES:
        assert_error(client.open(path, method=method), 401, "UNAUTHORIZED")
        assert_error(client.open(path, method=method, headers={"X-API-Key": "nope"}), 401, "UNAUTHORIZED")
        forbidden = client.open(path, method=method, headers={"X-API-Key": client_key})
        assert_error(forbidden, 403, "FORBIDDEN")
        for headers in ({"X-API-Key": admin_key}, {"Authorization": f"Bearer {admin_key}"}):
            allowed = client.open(path, method=method, headers=headers)
            assert allowed.status_code == 200, (path, allowed.get_data(as_text=True))
            assert allowed.get_json()["scope"] == "process"
    # validation comes after authorization: no key is still 401, an admin key gets the 400
    assert_error(client.get(f"{MON}/metrics?window=0"), 401, "UNAUTHORIZED")
    assert_error(
        client.get(f"{MON}/metrics?window=0", headers={"X-API-Key": admin_key}), 400, "VALIDATION_ERROR"
    )


def test_the_configured_admin_key_opens_monitoring(database_url):
    app = make_app(
        database_url,
        APP_ENV="production",
        SECRET_KEY="s",
        ADMIN_API_KEY="boot-admin",
        ENABLE_RATE_LIMITING=False,
    )
    reset_database(app)
    client = app.test_client()
    assert_error(client.get(f"{MON}/report"), 401, "UNAUTHORIZED")
    assert client.get(f"{MON}/report", headers={"X-API-Key": "boot-admin"}).status_code == 200


# --- report on the live service ---------------------------------------------------------


@pytest.mark.options(TOKEN_CLOCK=None)
def test_report_is_quiet_when_healthy_and_names_what_is_wrong(client, app):
    never_swept = get(client, "/report")
    assert [f["rule"] for f in never_swept["recommendations"]] == ["sweeper_late"]
    assert never_swept["status"] == "attention" and never_swept["summary"]["last_sweep_at"] is None
    assert app.test_cli_runner().invoke(args=["tokens", "sweep"]).exit_code == 0
    healthy = get(client, "/report")
    assert (healthy["status"], healthy["recommendations"], healthy["top_issues"]) == ("ok", [], [])
    assert healthy["window_minutes"] == 60
    assert set(healthy["summary"]) == {
        "requests",
        "error_rate",
        "p95_ms",
        "pool_utilization",
        "tokens_available",
        "last_sweep_at",
    }
    assert healthy["summary"]["requests"] == 1 and healthy["summary"]["tokens_available"] == POOL
    for _ in range(POOL):
        assert activate(client, user()).status_code == 200
    empty = get(client, "/report?window=5")
    first = empty["recommendations"][0]
    assert (first["rule"], first["severity"], first["figure"]) == ("no_token_available", "critical", 0)
    assert empty["top_issues"][0] == first["message"]
    assert empty["summary"]["pool_utilization"] == 1.0 and empty["summary"]["tokens_available"] == 0


# --- database and cache stats -------------------------------------------------------------


def test_database_stats_agree_with_the_token_api(client, app):
    leases = [activate(client, user()).get_json() for _ in range(3)]
    assert release(client, leases[0]).status_code == 200
    stats = get(client, "/database-stats")
    summary = client.get("/api/tokens/summary").get_json()
    for name in ("total", "active", "available"):
        assert stats["tokens"][name] == summary[name], name
    assert stats["tokens"]["active"] == 2
    assert stats["usages"] == {"total": 3, "open": 2}
    with app.app_context(), db.engine.connect() as conn:
        keys = conn.execute(text("SELECT count(*), count(*) - count(revoked_at) FROM api_keys")).one()
    assert stats["api_keys"] == {"total": keys[0], "active": keys[1]}
    assert stats["migration_revision"] == head_revision()
    assert stats["dialect"] in ("sqlite", "postgresql")
    assert stats["database_size_bytes"] > 0
    pool = stats["connection_pool"]
    assert set(pool) >= {"pid", "size", "checked_out", "overflow", "status", "in_use", "idle", "max"}
    assert pool["checked_out"] == pool["in_use"]
    assert pool["pid"] == os.getpid()
    assert isinstance(pool["status"], str)
    if stats["dialect"] == "postgresql":
        # read after the statistics' own transaction gave its connection back
        assert pool["size"] == app.config["POOL_SIZE"] and pool["checked_out"] == 0


@pytest.mark.options(HEALTH_CACHE_SECONDS=5)
def test_cache_stats_count_a_health_hit_and_clear_resets_them(client):
    client.get("/health")
    client.get("/health")
    health = get(client, "/cache-stats")["caches"]["health_report"]
    assert health == {"hits": 1, "misses": 1, "size": 1, "hit_rate": 0.5, "ttl_seconds": 5}
    cleared = client.post(f"{MON}/cache/clear")
    assert cleared.status_code == 200
    assert cleared.get_json()["cleared"] == ["api_keys", "health_report"]
    caches = get(client, "/cache-stats")["caches"]
    assert caches["health_report"] == {"hits": 0, "misses": 0, "size": 0, "hit_rate": 0.0, "ttl_seconds": 5}
    assert caches["api_keys"]["size"] == 0 and caches["api_keys"]["hits"] == 0
    client.get("/health")
    assert get(client, "/cache-stats")["caches"]["health_report"]["misses"] == 1


# --- the test hook ---------------------------------------------------------------------------


def test_sleep_hook_is_404_while_hooks_are_off(client, app):
    assert app.config["ENABLE_TEST_HOOKS"] is False
    assert_error(client.get(f"{MON}/test/sleep?ms=5"), 404, "NOT_FOUND")


def test_test_hooks_cannot_be_enabled_in_production(tmp_path):
    settings = {
        "APP_ENV": "production",
        "SECRET_KEY": "s",
        "ENABLE_TEST_HOOKS": True,
        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "x.sqlite3"),
    }
    with pytest.raises(ConfigError, match="ENABLE_TEST_HOOKS"):
        create_app(settings)


def test_sleep_hook_records_a_slow_request_and_statement_in_process(postgres_url):
    app = make_app(postgres_url, ENABLE_TEST_HOOKS=True, SLOW_QUERY_MS=50, SLOW_REQUEST_MS=100)
    reset_database(app)
    client = app.test_client()
    slept = client.get(f"{MON}/test/sleep?ms=150")
    assert slept.status_code == 200 and slept.get_json()["slept_ms"] == 150
    request_id = slept.headers["X-Request-ID"]
    slow_api = get(client, "/slow-apis")["slow_apis"][0]
    assert (slow_api["route"], slow_api["status"], slow_api["request_id"]) == (
        f"{MON}/test/sleep",
        200,
        request_id,
    )
    assert slow_api["duration_ms"] >= 150
    query = get(client, "/slow-queries")["slow_queries"][0]
    assert "pg_sleep" in query["statement"] and "0.15" not in query["statement"]
    assert query["request_id"] == request_id and query["duration_ms"] >= 150
    figures = get(client, "/metrics?window=5")
    assert figures["slow_requests"] == 1 and figures["slow_queries"] >= 1


def test_sleep_hook_needs_postgresql(sqlite_url):
    app = make_app(sqlite_url, ENABLE_TEST_HOOKS=True)
    reset_database(app)
    assert_error(app.test_client().get(f"{MON}/test/sleep?ms=5"), 400, "VALIDATION_ERROR")


def test_activity_counts_leases_evictions_and_expiries_per_minute(client, app, clock):
    users = [user() for _ in range(POOL + 1)]
    for u in users:  # the pool's leases, then one eviction
        assert activate(client, u).status_code == 200
    assert activate(client, users[-1]).status_code == 200  # the same lease again: not a new one
    clock.advance(app.config["TOKEN_LIFETIME_SECONDS"] + 1)
    assert activate(client, user()).status_code == 200  # takes over an expired lease
    body = get(client, "/activity?window=3")
    assert body["window_minutes"] == 3 and len(body["minutes"]) == 3
    assert [m["minute"] for m in body["minutes"]] == sorted(m["minute"] for m in body["minutes"])
    assert all(m["minute"].endswith(":00Z") for m in body["minutes"])
    series = ("leases", "evictions", "expiries", "rejections")
    totals = {s: sum(m[s] for m in body["minutes"]) for s in series}
    assert totals == {"leases": POOL + 2, "evictions": 1, "expiries": 1, "rejections": 0}
    assert get(client, "/activity")["window_minutes"] == 60
    assert set(MinuteActivity.model_fields) == {"minute", *ACTIVITY}  # the document names every series
    assert_error(client.get(f"{MON}/activity?window=0"), 400, "VALIDATION_ERROR")


# --- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_documents_every_monitoring_route(client, app):
    doc = client.get("/openapi.json").get_json()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    found = [
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(MON)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    ]
    assert {(method, path) for path, method in found} >= set(ROUTES)
    for path, method in found:
        assert (path, method) in documented, (path, method)
        operation = doc["paths"][path][method.lower()]
        assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}]
        assert {"200", "401", "403"} <= set(operation["responses"]), path
        if operation.get("parameters"):
            assert "400" in operation["responses"], path
    params = {p["name"]: p["schema"] for p in doc["paths"][f"{MON}/metrics"]["get"]["parameters"]}
    assert (params["window"]["minimum"], params["window"]["maximum"]) == (1, 1440)
    for recent in ("slow-queries", "slow-apis", "errors"):
        (limit,) = doc["paths"][f"{MON}/{recent}"]["get"]["parameters"]
        assert (limit["name"], limit["schema"]["minimum"], limit["schema"]["maximum"]) == ("limit", 1, 100)
    refs = {
        ref["$ref"].rsplit("/", 1)[1]
        for ops in doc["paths"].values()
        for op in ops.values()
        for ref in op["responses"].values()
        if "$ref" in ref
    }
    assert refs <= set(doc["components"]["responses"])
