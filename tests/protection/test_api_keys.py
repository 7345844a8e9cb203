"""API keys: the CLI, admin routes by role in both headers, revocation, bootstrap key, auth failures."""

from __future__ import annotations

import json
import secrets

import pytest
from sqlalchemy import text

from service.apikeys.service import hash_key
from service.db import observe_queries
from service.extensions import db
from tests.helpers import activate, assert_error, user
from tests.observability.test_metrics import sample
from tests.protection.support import (
    ADMIN_NEEDED,
    AUTH_LIMITED,
    INVALID_KEY,
    KEY_NEEDED,
    NOT_ADMIN,
    assert_rate_limited,
    cli,
    create_key,
    with_key,
)

PRODUCTION = {"APP_ENV": "production", "SECRET_KEY": "test-secret", "ENABLE_RATE_LIMITING": False}
STYLES = ["x-api-key", "bearer"]


def test_cli_create_list_revoke(build):
    app = build(ENABLE_RATE_LIMITING=False)
    created = cli(app, "create", "--name", "ops", "--role", "admin")
    assert created.exit_code == 0, created.output
    assert "Created admin key 'ops'" in created.output and "will not be shown again" in created.output
    admin_key = created.output.strip().splitlines()[-1]
    client_key = create_key(app, "mobile", "client", "--per-minute", "5", "--per-hour", "50")
    assert admin_key != client_key

    listed = cli(app, "list")
    assert listed.exit_code == 0, listed.output
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.output.strip().splitlines()}
    assert set(rows) == {"mobile", "ops"}
    assert rows["ops"][1:3] == ["admin", "active"] and rows["ops"][4] == "used never"
    assert rows["mobile"][1:3] == ["client", "active"] and rows["mobile"][5] == "5/min 50/h"
    for key in (admin_key, client_key):
        assert key not in listed.output and hash_key(key) not in listed.output
    assert "tp_" not in listed.output

    with app.app_context(), db.engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT name, key_hash FROM api_keys")).all())
    assert stored == {"ops": hash_key(admin_key), "mobile": hash_key(client_key)}

    duplicate = cli(app, "create", "--name", "ops", "--role", "client")
    assert duplicate.exit_code != 0 and "exists already" in duplicate.output
    assert cli(app, "create", "--name", "x", "--role", "root").exit_code != 0

    revoked = cli(app, "revoke", "mobile")
    assert revoked.exit_code == 0 and "Revoked 'mobile'." in revoked.output
    rows = {line.split("\t")[0]: line.split("\t") for line in cli(app, "list").output.strip().splitlines()}
    assert rows["mobile"][2].startswith("revoked 20") and rows["ops"][2] == "active"
    again = cli(app, "revoke", "mobile")
    assert again.exit_code != 0 and "no active API key named 'mobile'" in again.output
    assert cli(app, "revoke", "nobody").exit_code != 0


@pytest.mark.parametrize("style", STYLES)
def test_admin_routes_by_role_in_production(build, style):
    app = build(**PRODUCTION, API_KEY_CACHE_SECONDS=0)
    admin = create_key(app, "ops", "admin")
    client_key = create_key(app, "mobile", "client")
    client = app.test_client()

    assert_error(client.delete("/api/tokens/active"), 401, "UNAUTHORIZED", ADMIN_NEEDED)
    r = client.delete("/api/tokens/active", headers=with_key(client_key, style))
    assert_error(r, 403, "FORBIDDEN", NOT_ADMIN)
    r = client.delete("/api/tokens/active", headers=with_key("tp_unknown-key", style))
    assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)

    token = activate(client, user()).get_json()["token_id"]
    release = f"/api/tokens/{token}/release"
    assert_error(client.post(release), 401, "UNAUTHORIZED", ADMIN_NEEDED)
    assert_error(client.post(release, headers=with_key(client_key, style)), 403, "FORBIDDEN", NOT_ADMIN)
    r = client.post(release, headers=with_key(admin, style))
    assert r.status_code == 200 and r.get_json()["token_id"] == token

    activate(client, user())
    r = client.delete("/api/tokens/active", headers=with_key(admin, style))
    assert r.status_code == 200
    assert r.get_json() == {"cleared_count": 1, "status": "ok"}
    # a client key (or none) still serves the ordinary API
    assert client.get("/api/tokens/summary", headers=with_key(client_key, style)).status_code == 200
    assert client.get("/api/tokens/summary").status_code == 200


def test_bearer_scheme_is_case_insensitive_and_other_schemes_are_no_key(build):
    app = build(**PRODUCTION)
    admin = create_key(app, "ops", "admin")
    client = app.test_client()
    assert (
        client.delete("/api/tokens/active", headers={"Authorization": f"bearer {admin}"}).status_code == 200
    )
    r = client.delete("/api/tokens/active", headers={"Authorization": f"Basic {admin}"})
    assert_error(r, 401, "UNAUTHORIZED", ADMIN_NEEDED)


@pytest.mark.parametrize("style", STYLES)
def test_revoked_key_fails(build, style):
    app = build(**PRODUCTION, API_KEY_CACHE_SECONDS=0)
    admin = create_key(app, "ops", "admin")
    client = app.test_client()
    assert client.delete("/api/tokens/active", headers=with_key(admin, style)).status_code == 200
    assert cli(app, "revoke", "ops").exit_code == 0
    r = client.delete("/api/tokens/active", headers=with_key(admin, style))
    assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)
    r = client.get("/api/tokens/summary", headers=with_key(admin, style))  # not only on admin routes
    assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)
    text_ = client.get("/metrics").get_data(as_text=True)
    assert sample(text_, "tokenpool_auth_failures_total", reason="revoked_key") == 2


@pytest.mark.parametrize("style", STYLES)
def test_bootstrap_admin_key_from_config(build, style):
    app = build(**PRODUCTION, ADMIN_API_KEY="bootstrap-admin-secret-0123456789")
    client = app.test_client()
    r = client.delete("/api/tokens/active", headers=with_key("bootstrap-admin-secret-0123456789", style))
    assert r.status_code == 200 and r.get_json()["status"] == "ok"
    r = client.delete("/api/tokens/active", headers=with_key("bootstrap-admin-secret-012345678", style))
    assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)
    assert_error(client.delete("/api/tokens/active"), 401, "UNAUTHORIZED", ADMIN_NEEDED)


def test_development_without_keys_leaves_admin_routes_open(build):
    app = build(APP_ENV="development", ENABLE_RATE_LIMITING=False, API_KEY_CACHE_SECONDS=0)
    client = app.test_client()
    token = activate(client, user()).get_json()["token_id"]
    assert client.post(f"/api/tokens/{token}/release").status_code == 200
    assert client.delete("/api/tokens/active").status_code == 200
    # once a key exists, the admin routes want one even in development
    admin = create_key(app, "ops", "admin")
    assert_error(client.delete("/api/tokens/active"), 401, "UNAUTHORIZED", ADMIN_NEEDED)
    assert client.delete("/api/tokens/active", headers=with_key(admin)).status_code == 200


def test_production_without_keys_keeps_admin_routes_closed(build):
    client = build(**PRODUCTION).test_client()
    assert_error(client.delete("/api/tokens/active"), 401, "UNAUTHORIZED", ADMIN_NEEDED)


def test_api_auth_required_needs_a_key_on_api_routes_only(build):
    app = build(**PRODUCTION, API_AUTH_REQUIRED=True)
    key = create_key(app, "mobile", "client")
    client = app.test_client()
    assert_error(client.get("/api/tokens/summary"), 401, "UNAUTHORIZED", KEY_NEEDED)
    assert_error(
        client.post("/api/tokens/activate", json={"user_id": user()}), 401, "UNAUTHORIZED", KEY_NEEDED
    )
    for path in ("/healthz", "/health/live", "/health/ready", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert client.get("/api/tokens/summary", headers=with_key(key)).status_code == 200
    r = client.post("/api/tokens/activate", json={"user_id": user()}, headers=with_key(key, "bearer"))
    assert r.status_code == 200


def test_failed_auth_budget_per_ip(build):
    app = build(ENABLE_RATE_LIMITING=True, AUTH_FAILURE_RATE_LIMIT="3/minute")
    client = app.test_client()
    for i in range(3):
        r = client.get("/api/tokens/summary", headers=with_key(f"tp_guess-{i}"))
        assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)
    r = client.get("/api/tokens/summary", headers=with_key("tp_guess-4", "bearer"))
    assert_rate_limited(r, AUTH_LIMITED)
    assert_rate_limited(client.delete("/api/tokens/active", headers=with_key("tp_guess-5")), AUTH_LIMITED)
    # another address has its own budget
    r = client.get(
        "/api/tokens/summary", headers=with_key("tp_guess-6"), environ_base={"REMOTE_ADDR": "192.0.2.9"}
    )
    assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)
    text_ = client.get("/metrics").get_data(as_text=True)
    assert sample(text_, "tokenpool_rate_limit_hits_total", limit="auth_failures") == 2
    # the two refused attempts were never looked up: not known to be unknown
    assert sample(text_, "tokenpool_auth_failures_total", reason="unknown_key") == 4


@pytest.mark.parametrize("required", [True, False], ids=["API_AUTH_REQUIRED", "admin-route"])
def test_failures_that_guess_nothing_do_not_spend_the_failed_auth_budget(build, required):
    """A missing key, a missing metrics token and a client key on an admin route are logged and
    counted, but only a presented credential that is wrong spends the budget: a client that
    forgot its header must not lock its valid key out."""
    app = build(
        ENABLE_RATE_LIMITING=True,
        AUTH_FAILURE_RATE_LIMIT="3/minute",
        API_AUTH_REQUIRED=required,
        API_KEY_CACHE_SECONDS=0,  # every request with a key looks it up: the budget is checked
        METRICS_TOKEN="scrape-secret",
    )
    admin, mobile = create_key(app, "ops", "admin"), create_key(app, "mobile", "client")
    client = app.test_client()
    missing = KEY_NEEDED if required else ADMIN_NEEDED
    for _ in range(6):
        assert_error(client.delete("/api/tokens/active"), 401, "UNAUTHORIZED", missing)
        assert_error(
            client.delete("/api/tokens/active", headers=with_key(mobile)), 403, "FORBIDDEN", NOT_ADMIN
        )
        assert client.get("/metrics").status_code == 401
    assert client.delete("/api/tokens/active", headers=with_key(admin)).status_code == 200
    for i in range(3):  # a wrong metrics token (or key) still spends it
        assert client.get("/metrics", headers={"Authorization": f"Bearer wrong-{i}"}).status_code == 401
    assert_rate_limited(client.get("/api/tokens/summary", headers=with_key(admin)), AUTH_LIMITED)
    scrape = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).get_data(as_text=True)
    for reason, count in (("missing_key", 6), ("not_admin", 6), ("metrics_token", 9)):
        assert sample(scrape, "tokenpool_auth_failures_total", reason=reason) == count, reason


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_a_spent_failed_auth_budget_refuses_before_any_lookup(build, on_redis, storage):
    """300 random keys from one IP: 10 lookups (the budget), not 300."""
    settings = on_redis if storage == "redis" else {}
    app = build(AUTH_FAILURE_RATE_LIMIT="10/minute", **settings)
    good = create_key(app, "known", "client")
    client = app.test_client()
    assert client.get("/api/tokens/summary", headers=with_key(good)).status_code == 200  # now cached
    lookups = []
    observe_queries(app, lambda sql, _: "FROM api_keys" in sql and "key_hash" in sql and lookups.append(sql))
    statuses = [
        client.get("/api/tokens/summary", headers=with_key("tp_" + secrets.token_urlsafe(32))).status_code
        for _ in range(300)
    ]
    assert statuses == [401] * 10 + [429] * 290
    assert len(lookups) == 10
    # a key this process already knows is still served from the spent address
    assert client.get("/api/tokens/summary", headers=with_key(good)).status_code == 200
    assert len(lookups) == 10
    text_ = client.get("/metrics").get_data(as_text=True)
    assert sample(text_, "tokenpool_rate_limit_hits_total", limit="auth_failures") == 290


def test_auth_failures_are_logged_and_counted_never_the_key(build, tmp_path):
    path = tmp_path / "app.log"
    app = build(**PRODUCTION, API_KEY_CACHE_SECONDS=0, LOG_FILE=str(path), LOG_LEVEL="INFO")
    client_key = create_key(app, "mobile", "client")
    gone = create_key(app, "gone", "client")
    admin = create_key(app, "ops", "admin")
    assert cli(app, "revoke", "gone").exit_code == 0
    client = app.test_client()
    unknown = "tp_Unknown-Secret-Key-0123456789abcdef"

    assert client.delete("/api/tokens/active").status_code == 401
    assert client.delete("/api/tokens/active", headers=with_key(unknown)).status_code == 401
    assert client.delete("/api/tokens/active", headers=with_key(client_key, "bearer")).status_code == 403
    assert client.get("/api/tokens/summary", headers=with_key(gone)).status_code == 401
    assert client.delete("/api/tokens/active", headers=with_key(admin)).status_code == 200

    text_ = client.get("/metrics").get_data(as_text=True)
    for reason in ("missing_key", "unknown_key", "not_admin", "revoked_key"):
        assert sample(text_, "tokenpool_auth_failures_total", reason=reason) == 1, reason

    raw = path.read_text()
    lines = [json.loads(line) for line in raw.splitlines()]
    failures = {line["reason"]: line for line in lines if line.get("event") == "auth_failure"}
    assert set(failures) == {"missing_key", "unknown_key", "not_admin", "revoked_key"}
    for line in failures.values():
        assert line["level"] == "WARNING" and line["ip"] == "127.0.0.1" and line["request_id"]
    assert failures["not_admin"]["key_name"] == "mobile"
    assert failures["revoked_key"]["key_name"] == "gone"
    assert failures["unknown_key"]["key_name"] is None
    for secret in (client_key, gone, admin, unknown):
        assert secret not in raw and hash_key(secret) not in raw
    assert "tp_" not in raw
