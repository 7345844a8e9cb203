"""The token API over HTTP, on SQLite and PostgreSQL, with an injected clock."""

from __future__ import annotations

import io
import json
import re
import uuid

import pytest

from tests.helpers import POOL, activate, assert_error, history_on_one_token, release, renew, user

LIFETIME = 120


def test_activate_returns_a_lease(client, clock):
    u = user()
    r = activate(client, u)
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == {
        "token_id",
        "user_id",
        "lease_id",
        "activated_at",
        "expires_at",
        "fencing_token",
        "evicted",
    }
    assert body["user_id"] == u
    assert str(uuid.UUID(body["lease_id"])) == body["lease_id"]
    assert body["activated_at"] == "2030-01-01T12:00:00Z"
    assert body["expires_at"] == "2030-01-01T12:02:00Z"


def test_same_user_gets_the_same_token_unchanged(client, clock):
    u = user()
    first = activate(client, u).get_json()
    clock.advance(30)
    first.pop("lease_id")  # the holder has it already; the answer again does not repeat it
    assert activate(client, u).get_json() == first
    assert client.get("/api/tokens/summary").get_json()["active"] == 1


def test_different_users_get_different_tokens(client):
    ids = {activate(client, user()).get_json()["token_id"] for _ in range(POOL)}
    assert len(ids) == POOL
    assert client.get("/api/tokens/summary").get_json()["available"] == 0


def test_full_pool_evicts_the_lease_that_ends_first(client, clock):
    users = []
    for _ in range(POOL):
        users.append(user())
        activate(client, users[-1])
        clock.advance(1)
    oldest = client.get("/api/tokens?state=active").get_json()["tokens"]
    oldest_token = next(t for t in oldest if t["current_user_id"] == users[0])
    newcomer = user()
    lease = activate(client, newcomer).get_json()
    assert lease["token_id"] == oldest_token["token_id"]
    history = client.get(f"/api/tokens/{lease['token_id']}/usages").get_json()["usages"]
    assert [u["end_reason"] for u in history] == [None, "evicted"]
    assert history[1]["user_id"] == users[0]
    assert history[1]["ended_at"] == lease["activated_at"]
    # the evicted user comes back and evicts the next oldest, not the newcomer
    again = activate(client, users[0]).get_json()
    assert again["token_id"] != lease["token_id"]


def test_renewal_counts_as_a_fresh_start_for_eviction(client, clock):
    users = [user() for _ in range(POOL)]
    leases = []
    for u in users:
        leases.append(activate(client, u).get_json())
        clock.advance(1)
    assert renew(client, leases[0]).status_code == 200
    evicted = activate(client, user()).get_json()
    assert evicted["token_id"] == leases[1]["token_id"]


def test_expiry_is_exact_without_a_sweep(client, clock):
    u = user()
    lease = activate(client, u).get_json()
    clock.advance(LIFETIME - 0.001)
    assert client.get(f"/api/tokens/{lease['token_id']}").get_json()["state"] == "active"
    clock.advance(0.001)
    token = client.get(f"/api/tokens/{lease['token_id']}").get_json()
    assert token["state"] == "available"
    assert token["current_user_id"] is None
    assert client.get("/api/tokens/summary").get_json()["active"] == 0
    assert client.get("/api/tokens?state=active").get_json()["tokens"] == []


def test_expired_lease_closes_at_its_true_end_when_reused(client, clock):
    u = user()
    lease = activate(client, u).get_json()
    clock.advance(LIFETIME + 500)
    again = activate(client, u).get_json()
    assert again["activated_at"] == "2030-01-01T12:10:20Z"
    history = client.get(f"/api/tokens/{lease['token_id']}/usages").get_json()["usages"]
    expired = [h for h in history if h["end_reason"] == "expired"]
    assert expired and expired[0]["ended_at"] == lease["expires_at"]


def test_least_recently_released_token_is_leased_first(client, clock):
    tokens = [activate(client, user()).get_json() for _ in range(POOL)]
    for lease in reversed(tokens):  # release in reverse order, one second apart
        release(client, lease)
        clock.advance(1)
    assert activate(client, user()).get_json()["token_id"] == tokens[-1]["token_id"]
    assert activate(client, user()).get_json()["token_id"] == tokens[-2]["token_id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing required parameter: user_id"),
        ({"user_id": None}, "Missing required parameter: user_id"),
        ({"user_id": "not-a-uuid"}, "Invalid user_id format. Must be a valid UUID."),
        ({"user_id": 42}, "Invalid user_id format. Must be a valid UUID."),
        ({"user_id": ["x"]}, "Invalid user_id format. Must be a valid UUID."),
    ],
)
def test_activate_rejects_bad_user_ids(client, body, message):
    body_out = assert_error(client.post("/api/tokens/activate", json=body), 400, "VALIDATION_ERROR", message)
    assert body_out["status"] == "bad_request"
    assert body_out["details"] == {"field": "user_id"}


def test_activate_with_no_body_is_a_missing_parameter(client):
    assert_error(
        client.post("/api/tokens/activate"), 400, "VALIDATION_ERROR", "Missing required parameter: user_id"
    )


@pytest.mark.parametrize(
    "raw",
    [
        '{"user_id": ',
        '{"user_id": NaN}',  # Python's json module would take these; JSON has no such values
        '{"user_id": Infinity}',
        '{"user_id": "\\ud800"}',  # a lone surrogate
        b'{"user_id": "\xff"}',  # not UTF-8
    ],
)
def test_malformed_json_is_invalid_json(client, raw):
    r = client.post("/api/tokens/activate", data=raw, content_type="application/json")
    assert_error(r, 400, "INVALID_JSON")


@pytest.mark.parametrize(
    ("raw", "reason", "position"),
    [
        ('{"user_id": ', "unexpected end of data", 12),
        ('{"user_id": ' + "[" * 2000 + "]" * 2000 + "}", "depth limit exceeded", 1036),  # valid, too deep
    ],
)
def test_invalid_json_says_why_and_where(client, raw, reason, position):
    r = client.post("/api/tokens/activate", data=raw, content_type="application/json")
    assert assert_error(r, 400, "INVALID_JSON")["details"] == {"reason": reason, "position": position}


def test_json_answers_are_compact_with_sorted_keys(client):
    r = client.post("/api/tokens/activate", json={"user_id": str(user())})
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    keys = re.findall(r'"(\w+)":', body)
    assert keys == sorted(keys) and ", " not in body and ": " not in body


def test_json_that_is_not_an_object_is_rejected(client):
    assert_error(client.post("/api/tokens/activate", json=["a"]), 400, "VALIDATION_ERROR")


def test_wrong_content_type_is_415(client):
    r = client.post(
        "/api/tokens/activate", data="user_id=x", content_type="application/x-www-form-urlencoded"
    )
    assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_oversized_body_is_413_and_nothing_is_written(client):
    r = client.post("/api/tokens/activate", data="x" * (65 * 1024), content_type="application/json")
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert client.get("/api/tokens/summary").get_json()["active"] == 0


def post_chunked(client, body: bytes, path: str = "/api/tokens/activate", method: str = "POST"):
    """Send `body` without Content-Length, as a chunked request reaches the app (gunicorn
    de-chunks it and sets wsgi.input_terminated)."""
    environ = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
    return client.open(
        path,
        method=method,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        environ_overrides=environ,
    )


@pytest.mark.parametrize("filler", [1, 65 * 1024, 5 * 1024 * 1024])
def test_a_chunked_body_over_the_limit_is_413_not_cut_at_it(client, filler):
    """A valid JSON object padded past MAX_CONTENT_LENGTH: it was read up to the limit, and
    the cut body was accepted (200) or refused as invalid JSON (400)."""
    body = json.dumps({"user_id": user()}).encode() + b" " * (64 * 1024 + filler)
    assert_error(post_chunked(client, body), 413, "PAYLOAD_TOO_LARGE")
    assert client.get("/api/tokens/summary").get_json()["active"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/pools", {"name": "chunked", "size": 3, "lifetime_seconds": 60}),
        ("PATCH", "/api/pools/default", {"size": 5}),
        ("POST", f"/api/tokens/{uuid.UUID(int=1)}/release", {"user_id": str(uuid.UUID(int=2))}),
    ],
)
def test_every_body_reader_refuses_a_chunked_body_over_the_limit(client, method, path, body):
    padded = json.dumps(body).encode() + b" " * (65 * 1024)
    assert_error(post_chunked(client, padded, path, method), 413, "PAYLOAD_TOO_LARGE")


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(client):
    start = json.dumps({"user_id": user()}).encode()
    response = post_chunked(client, start + b" " * (64 * 1024 - len(start)))
    assert response.status_code == 200, response.get_json()


def test_get_token_with_usage_count(client):
    u = user()
    lease = activate(client, u).get_json()
    token = client.get(f"/api/tokens/{lease['token_id']}").get_json()
    assert token == {
        "token_id": lease["token_id"],
        "state": "active",
        "current_user_id": u,
        "activated_at": lease["activated_at"],
        "expires_at": lease["expires_at"],
        "released_at": None,
        "usage_count": 1,
        "fencing_token": lease["fencing_token"],
    }


def test_unknown_token_is_404_token_not_found(client):
    for path in (f"/api/tokens/{uuid.uuid4()}", f"/api/tokens/{uuid.uuid4()}/usages"):
        assert_error(client.get(path), 404, "NOT_FOUND", "Token not found")
    tid = uuid.uuid4()
    assert_error(client.post(f"/api/tokens/{tid}/release"), 404, "NOT_FOUND", "Token not found")
    body = {"user_id": user(), "lease_id": user()}
    assert_error(client.post(f"/api/tokens/{tid}/renew", json=body), 404, "NOT_FOUND")
    assert_error(client.post(f"/api/tokens/{tid}/release", json=body), 404, "NOT_FOUND")


def test_malformed_token_id_is_400(client):
    assert_error(
        client.get("/api/tokens/nope"),
        400,
        "VALIDATION_ERROR",
        "Invalid token_id format. Must be a valid UUID.",
    )


def test_release_by_holder(client, clock):
    u = user()
    lease = activate(client, u).get_json()
    clock.advance(10)
    r = release(client, lease)
    assert r.status_code == 200
    token = r.get_json()
    assert "lease_id" not in token
    assert token["state"] == "available"
    assert token["released_at"] == "2030-01-01T12:00:10Z"
    history = client.get(f"/api/tokens/{lease['token_id']}/usages").get_json()["usages"]
    assert history[0]["end_reason"] == "released"
    assert history[0]["ended_at"] == "2030-01-01T12:00:10Z"


def test_release_by_non_holder_is_conflict_and_changes_nothing(client):
    lease = activate(client, user()).get_json()
    r = release(client, lease | {"user_id": user()})
    assert_error(r, 409, "CONFLICT", "Token is held by another user")
    assert client.get(f"/api/tokens/{lease['token_id']}").get_json()["state"] == "active"


def test_release_of_inactive_token_is_conflict(client):
    lease = activate(client, user()).get_json()
    client.post(f"/api/tokens/{lease['token_id']}/release")
    assert_error(release(client, lease), 409, "CONFLICT", "Token is not active")


def test_admin_release_without_body(client):
    lease = activate(client, user()).get_json()
    r = client.post(f"/api/tokens/{lease['token_id']}/release")
    assert r.status_code == 200
    assert r.get_json()["state"] == "available"


def test_renew_extends_to_now_plus_lifetime(client, clock):
    u = user()
    lease = activate(client, u).get_json()
    clock.advance(100)
    token = renew(client, lease).get_json()
    assert token["expires_at"] == "2030-01-01T12:03:40Z"
    assert token["lease_id"] == lease["lease_id"]  # the same lease, extended
    assert token["activated_at"] == lease["activated_at"]
    clock.advance(LIFETIME - 1)
    assert client.get(f"/api/tokens/{lease['token_id']}").get_json()["state"] == "active"


def test_renew_by_non_holder_or_of_expired_is_conflict(client, clock):
    u = user()
    lease = activate(client, u).get_json()
    assert_error(renew(client, lease | {"user_id": user()}), 409, "CONFLICT", "Token is held by another user")
    assert_error(client.post(f"/api/tokens/{lease['token_id']}/renew", json={}), 400, "VALIDATION_ERROR")
    clock.advance(LIFETIME)
    assert_error(renew(client, lease), 409, "CONFLICT", "Token is not active")


def test_clear_releases_every_active_token(client, clock):
    leases = [activate(client, user()).get_json() for _ in range(3)]
    clock.advance(LIFETIME - 10)
    fresh = activate(client, user()).get_json()
    clock.advance(20)  # the first three have expired, `fresh` is active
    r = client.delete("/api/tokens/active")
    assert r.get_json() == {"cleared_count": 1, "status": "ok"}
    assert client.get("/api/tokens/summary").get_json()["active"] == 0
    reasons = {
        lease["token_id"]: client.get(f"/api/tokens/{lease['token_id']}/usages").get_json()["usages"][0]
        for lease in [*leases, fresh]
    }
    assert reasons[fresh["token_id"]]["end_reason"] == "cleared"
    for lease in leases:
        assert reasons[lease["token_id"]]["end_reason"] == "expired"
        assert reasons[lease["token_id"]]["ended_at"] == lease["expires_at"]


def test_list_filters_by_state(client):
    active = {activate(client, user()).get_json()["token_id"] for _ in range(2)}
    listed = client.get("/api/tokens?state=active").get_json()["tokens"]
    assert {t["token_id"] for t in listed} == active
    available = client.get("/api/tokens?state=available").get_json()["tokens"]
    assert len(available) == POOL - 2 and not active & {t["token_id"] for t in available}
    assert len(client.get("/api/tokens").get_json()["tokens"]) == POOL


def test_invalid_state_filter(client):
    assert_error(
        client.get("/api/tokens?state=busy"),
        400,
        "VALIDATION_ERROR",
        "Invalid state filter. Must be 'available', 'active', or 'all'.",
    )


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-1"])
def test_invalid_limit(client, limit):
    assert_error(client.get(f"/api/tokens?limit={limit}"), 400, "VALIDATION_ERROR")


def test_pagination_walks_every_token_once(client):
    seen, cursor = [], None
    while True:
        url = "/api/tokens?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).get_json()
        assert len(page["tokens"]) <= 2
        seen += [t["token_id"] for t in page["tokens"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == POOL
    assert seen == sorted(seen)


@pytest.mark.parametrize("cursor", ["garbage", "eyJrIjoidXNhZ2VzIiwidiI6IjEifQ", "e30"])
def test_invalid_cursor(client, cursor):
    assert_error(client.get(f"/api/tokens?cursor={cursor}"), 400, "VALIDATION_ERROR", "Invalid cursor.")


def test_usages_newest_first_and_paginated(client, clock):
    token_id = history_on_one_token(client, clock, releases=4)["token_id"]
    pages, cursor = [], None
    while True:
        url = f"/api/tokens/{token_id}/usages?limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).get_json()
        assert body["token_id"] == token_id
        pages += body["usages"]
        cursor = body["next_cursor"]
        if not cursor:
            break
    ids = [p["usage_id"] for p in pages]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert len(ids) == 5
    assert [p["end_reason"] for p in pages] == [None] + ["released"] * 4


def test_summary(client):
    activate(client, user())
    assert client.get("/api/tokens/summary").get_json() == {
        "total": POOL,
        "active": 1,
        "available": POOL - 1,
        "utilization": 0.2,
        "lifetime_seconds": LIFETIME,
    }


def test_unknown_route_and_wrong_method_use_the_error_shape(client):
    assert_error(client.get("/api/nothing"), 404, "NOT_FOUND")
    r = client.get("/api/tokens/activate")
    assert r.status_code in (400, 405)
    r = client.put("/api/tokens/summary")
    body = assert_error(r, 405, "METHOD_NOT_ALLOWED")
    assert body["status"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


def test_openapi_documents_every_token_route(client, app):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/tokens"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method) in documented
    assert "Error" in doc["components"]["schemas"]


def test_api_index_links_every_resource(client):
    r = client.get("/api")
    assert r.status_code == 200
    body = r.get_json()
    assert body["service"] == "tokenpool"
    assert body["lifetime_seconds"] == client.application.config["TOKEN_LIFETIME_SECONDS"]
    assert body["links"]["openapi"] == "/openapi.json"
    documented = client.get("/openapi.json").get_json()["paths"]
    for path in body["links"].values():
        assert path in documented or path == "/openapi.json", path
    assert client.get(body["links"]["summary"]).status_code == 200
