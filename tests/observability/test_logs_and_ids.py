"""Request ids and JSON logs: every line of a request carries its id; secrets never appear."""

from __future__ import annotations

import json

import pytest

from service.extensions import db
from tests.conftest import make_app, reset_database
from tests.helpers import activate, assert_error, proof, release, renew, user


@pytest.fixture
def logged(database_url, tmp_path, clock):
    """An app writing JSON logs to a file, and a reader of its parsed lines."""
    path = tmp_path / "app.log"
    app = make_app(database_url, LOG_FILE=str(path), LOG_LEVEL="INFO", TOKEN_CLOCK=clock)
    reset_database(app)

    def lines():
        return [json.loads(line) for line in path.read_text().splitlines()]

    yield app, lines
    with app.app_context():
        db.engine.dispose()


def test_valid_request_id_is_echoed(client):
    r = client.get("/api/tokens/summary", headers={"X-Request-ID": "abc-123", "X-Correlation-ID": "flow.7"})
    assert r.headers["X-Request-ID"] == "abc-123"
    assert r.headers["X-Correlation-ID"] == "flow.7"


@pytest.mark.parametrize("bad", ["x" * 200, "bad\tid", "a b", "ü-nicode", ""])
def test_absurd_request_id_is_replaced(client, bad):
    r = client.get("/api/tokens/summary", headers={"X-Request-ID": bad})
    assert r.headers["X-Request-ID"] != bad
    assert len(r.headers["X-Request-ID"]) == 32


def test_request_id_is_generated_and_on_errors(client):
    r = client.get("/api/tokens/not-a-uuid")
    body = assert_error(r, 400, "VALIDATION_ERROR")
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert r.headers["X-Correlation-ID"] == r.headers["X-Request-ID"]
    r = client.get("/nothing/here", headers={"X-Request-ID": "rid-404"})
    assert assert_error(r, 404, "NOT_FOUND")["request_id"] == "rid-404"


def test_every_log_line_of_a_request_carries_its_ids(logged):
    app, lines = logged
    client = app.test_client()
    client.post("/api/tokens/activate", json={"user_id": user()}, headers={"X-Request-ID": "req-act-1"})
    client.post("/api/tokens/activate", json={"user_id": "nope"}, headers={"X-Request-ID": "req-bad-1"})
    mine = [line for line in lines() if line.get("request_id") == "req-act-1"]
    assert {line["logger"] for line in mine} >= {"tokenpool.events", "tokenpool.access"}
    for line in lines():
        assert {"timestamp", "level", "logger", "message", "request_id", "correlation_id"} <= set(line)
        assert line["timestamp"].startswith("20")
    access = next(line for line in mine if line["logger"] == "tokenpool.access")
    assert access["method"] == "POST" and access["path"] == "/api/tokens/activate"
    assert access["status"] == 200 and access["duration_ms"] > 0 and access["remote_addr"] == "127.0.0.1"
    event = next(line for line in mine if line["logger"] == "tokenpool.events")
    assert event["event"] == "activation" and event["status"] == "success"
    assert {"token_id", "user_id", "reason", "duration_ms"} <= set(event)
    bad = [line for line in lines() if line.get("request_id") == "req-bad-1"]
    error = next(line for line in bad if line["logger"] == "tokenpool.errors")
    assert error["level"] == "WARNING" and error["error_id"]


def test_keys_and_authorization_never_reach_the_logs(logged):
    app, lines = logged
    client = app.test_client()
    secret_headers = {"X-API-Key": "sk-live-SECRET-1234", "Authorization": "Bearer SECRET-BEARER-5678"}
    client.post("/api/tokens/activate", json={"user_id": user()}, headers=secret_headers)
    client.delete("/api/tokens/active", headers=secret_headers)
    client.get("/api/tokens/summary?api_key=sk-live-SECRET-1234", headers=secret_headers)
    text = "\n".join(json.dumps(line) for line in lines())
    assert "SECRET" not in text
    assert len(lines()) >= 3


def test_unexpected_error_logs_traceback_but_body_has_none(postgres_url, tmp_path):
    path = tmp_path / "prod.log"
    app = make_app(postgres_url, APP_ENV="production", SECRET_KEY="s", LOG_FILE=str(path), LOG_LEVEL="INFO")

    def boom():
        raise RuntimeError("internal detail: password=hunter2")

    app.add_url_rule("/boom", "boom", boom)
    r = app.test_client().get("/boom")
    body = assert_error(r, 500, "INTERNAL_ERROR", "An unexpected error occurred.")
    assert "hunter2" not in r.get_data(as_text=True) and body["details"] == {}
    logged_lines = [json.loads(line) for line in path.read_text().splitlines()]
    error = next(line for line in logged_lines if line.get("error_id") == body["error_id"])
    assert error["level"] == "ERROR" and "RuntimeError" in error["exc_info"]
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'tokenpool_unhandled_exceptions_total{type="RuntimeError"} 1.0' in metrics
    with app.app_context():
        db.engine.dispose()


def test_each_failure_reason_is_counted_and_logged(logged):
    app, lines = logged
    client = app.test_client()
    lease = activate(client, user()).get_json()
    client.post("/api/tokens/activate", json={"user_id": "x"})
    client.post("/api/tokens/activate", json={})
    client.post(f"/api/tokens/{lease['token_id']}/release", json=proof(lease) | {"user_id": user()})
    client.post(f"/api/tokens/{lease['token_id']}/renew", json={"user_id": lease["user_id"]})
    client.post(f"/api/tokens/{lease['token_id']}/renew", json=proof(lease) | {"lease_id": user()})
    client.post("/api/tokens/00000000-0000-0000-0000-000000000000/release", json=proof(lease))
    release(client, lease)
    renew(client, lease)
    metrics = client.get("/metrics").get_data(as_text=True)
    expected = [
        ("activation", "invalid_user_id"),
        ("activation", "missing_user_id"),
        ("release", "not_holder"),
        ("renewal", "missing_lease_id"),
        ("renewal", "wrong_lease"),
        ("release", "token_not_found"),
        ("renewal", "not_active"),
    ]
    for operation, reason in expected:
        sample = f'tokenpool_token_operation_failures_total{{operation="{operation}",reason="{reason}"}} 1.0'
        assert sample in metrics
        assert any(
            line.get("event") == operation and line.get("reason") == reason and line["status"] == "failure"
            for line in lines()
        ), (operation, reason)
    assert 'tokenpool_releases_total{pool="default",reason="released"} 1.0' in metrics
    assert 'tokenpool_activations_total{pool="",reason="invalid_user_id",result="failure"} 1.0' in metrics
    assert not [line for line in lines() if lease["lease_id"] in json.dumps(line)]  # the holder's secret
    assert lease["lease_id"] not in metrics


def test_async_logging_keeps_ids_and_tracebacks(postgres_url, tmp_path):
    from service.logging_setup import flush_logs

    path = tmp_path / "async.log"
    app = make_app(
        postgres_url,
        LOG_FILE=str(path),
        LOG_LEVEL="INFO",
        LOG_ASYNC=True,
        APP_ENV="production",
        SECRET_KEY="s",
    )

    def boom():
        raise RuntimeError("queued traceback")

    app.add_url_rule("/boom", "boom", boom)
    client = app.test_client()
    assert client.get("/api/tokens/summary", headers={"X-Request-ID": "async-1"}).status_code == 200
    error_id = client.get("/boom").get_json()["error_id"]
    flush_logs()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    access = next(x for x in lines if x.get("request_id") == "async-1" and x["logger"] == "tokenpool.access")
    assert access["status"] == 200 and access["path"] == "/api/tokens/summary"
    error = next(x for x in lines if x.get("error_id") == error_id)
    assert "RuntimeError: queued traceback" in error["exc_info"]


def test_every_line_names_the_service_and_every_request_line_its_method_and_path(postgres_url, tmp_path):
    path = tmp_path / "app.log"
    app = make_app(postgres_url, LOG_FILE=str(path), LOG_LEVEL="INFO", APP_VERSION="9.9.9")
    reset_database(app)
    client = app.test_client()
    client.post("/api/tokens/activate", json={"user_id": user()}, headers={"X-Request-ID": "mp-1"})
    client.post("/api/tokens/activate", json={"user_id": "nope"}, headers={"X-Request-ID": "mp-2"})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines
    for line in lines:
        assert (line["service"], line["version"], line["environment"]) == ("tokenpool", "9.9.9", "testing")
    for request_id in ("mp-1", "mp-2"):
        mine = [line for line in lines if line["request_id"] == request_id]
        assert {line["logger"] for line in mine} >= {"tokenpool.events", "tokenpool.access"}
        for line in mine:
            assert (line["method"], line["path"]) == ("POST", "/api/tokens/activate"), line
    assert any(line["logger"] == "tokenpool.errors" for line in lines if line["request_id"] == "mp-2")


def test_access_line_names_the_key_and_the_user_agent_never_the_key(postgres_url, tmp_path):
    path = tmp_path / "app.log"
    secret = "sk-admin-SECRET-0123456789"
    app = make_app(postgres_url, LOG_FILE=str(path), LOG_LEVEL="INFO", ADMIN_API_KEY=secret)
    reset_database(app)
    client = app.test_client()
    headers = {"X-API-Key": secret, "User-Agent": "inventory-sync/2.1 (+ops)", "X-Request-ID": "ua-1"}
    assert client.get("/api/tokens/summary", headers=headers).status_code == 200
    client.get("/api/tokens/summary", headers={"User-Agent": "x" * 5000, "X-Request-ID": "ua-2"})
    text = path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    access = {line["request_id"]: line for line in lines if line["logger"] == "tokenpool.access"}
    assert access["ua-1"]["key_name"] == "bootstrap-admin"
    assert access["ua-1"]["user_agent"] == "inventory-sync/2.1 (+ops)"
    assert "key_name" not in access["ua-2"] and len(access["ua-2"]["user_agent"]) == 256
    assert "SECRET" not in text


def test_a_new_request_id_is_a_uuid4_in_hex(monkeypatch):
    import os
    import uuid

    from service.request_context import new_request_id

    for _ in range(200):
        made = new_request_id()
        assert len(made) == 32 and uuid.UUID(hex=made).version == 4 and uuid.UUID(hex=made).hex == made
    raw = bytes(range(240, 256))  # every bit set where uuid4 clears some
    monkeypatch.setattr(os, "urandom", lambda n: raw[:n])
    assert new_request_id() == uuid.UUID(bytes=raw, version=4).hex
    raw = bytes(16)
    monkeypatch.setattr(os, "urandom", lambda n: raw[:n])
    assert new_request_id() == uuid.UUID(bytes=raw, version=4).hex
