"""Proof of holdership: a lease's `lease_id` is its holder's secret, needed to release or renew it.

`user_id` is public (listings show it), so a caller who knows only the
`user_id` must neither end nor extend the lease, nor learn its `lease_id`;
admin keys see it. On SQLite and PostgreSQL, checked in the database rows.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from service.apikeys import service as apikeys
from service.db import run_transaction
from service.extensions import db
from tests.helpers import activate, assert_error, release, renew, user
from tests.invariants import assert_invariants

ADMIN_KEY = "tp_test_admin_key_for_lease_ids"
ADMIN = {"X-API-Key": ADMIN_KEY}
with_admin_key = pytest.mark.options(ADMIN_API_KEY=ADMIN_KEY)
OPS = ("release", "renew")


def rows(app) -> dict:
    """Every token and usage row as stored (the state nothing may change)."""
    with app.app_context(), db.engine.connect() as conn:
        return {
            "tokens": [tuple(r) for r in conn.execute(text("SELECT * FROM tokens ORDER BY id"))],
            "usages": [tuple(r) for r in conn.execute(text("SELECT * FROM token_usages ORDER BY id"))],
        }


def stored_lease_ids(app, token_id: str) -> tuple:
    """(the token row's lease_id, its open usage's lease_id), as strings or None."""
    with app.app_context(), db.engine.connect() as conn:
        tid = uuid.UUID(token_id)
        on_token = conn.execute(text("SELECT lease_id FROM tokens WHERE id = :t"), {"t": _param(conn, tid)})
        on_usage = conn.execute(
            text("SELECT lease_id FROM token_usages WHERE token_id = :t AND ended_at IS NULL"),
            {"t": _param(conn, tid)},
        )
        return tuple(_as_str(r) for r in (on_token.scalar(), on_usage.scalar()))


def _param(conn, value: uuid.UUID):
    return value if conn.dialect.name == "postgresql" else value.hex  # SQLite stores 32 hex digits


def _as_str(value) -> str | None:
    return None if value is None else str(uuid.UUID(str(value)))


def call(client, op: str, lease: dict, body: dict, **kwargs):
    return client.post(f"/api/tokens/{lease['token_id']}/{op}", json=body, **kwargs)


@pytest.mark.parametrize("op", OPS)
def test_a_caller_who_knows_only_the_user_id_cannot_release_or_renew(app, client, op):
    lease = activate(client, user()).get_json()
    other = activate(client, user()).get_json()
    before = rows(app)
    assert_error(
        call(client, op, lease, {"user_id": lease["user_id"]}),
        400,
        "VALIDATION_ERROR",
        "Missing required parameter: lease_id",
    )
    for guess in (str(uuid.uuid4()), other["lease_id"], lease["token_id"], lease["user_id"]):
        r = call(client, op, lease, {"user_id": lease["user_id"], "lease_id": guess})
        body = assert_error(r, 409, "CONFLICT", "lease_id does not match the token's current lease")
        assert lease["lease_id"] not in r.get_data(as_text=True)
        assert body["details"] == {"token_id": lease["token_id"], "field": "lease_id"}
    assert rows(app) == before  # nothing changed, not even a renewal's expires_at
    assert (release if op == "release" else renew)(client, lease).status_code == 200


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    ("body", "message", "field"),
    [
        ({"lease_id": None}, "Missing required parameter: lease_id", "lease_id"),
        ({"lease_id": "not-a-lease"}, "Invalid lease_id format. Must be a valid UUID.", "lease_id"),
        ({"lease_id": 42}, "Invalid lease_id format. Must be a valid UUID.", "lease_id"),
        ({"lease_id": ["x"]}, "Invalid lease_id format. Must be a valid UUID.", "lease_id"),
        ({"user_id": None}, "Missing required parameter: user_id", "user_id"),
        ({"user_id": "nope"}, "Invalid user_id format. Must be a valid UUID.", "user_id"),
    ],
)
def test_missing_or_malformed_proof_is_400_and_changes_nothing(app, client, op, body, message, field):
    lease = activate(client, user()).get_json()
    before = rows(app)
    sent = {"user_id": lease["user_id"], "lease_id": lease["lease_id"]} | body
    r = call(client, op, lease, {k: v for k, v in sent.items() if v is not None})
    out = assert_error(r, 400, "VALIDATION_ERROR", message)
    assert out["details"] == {"field": field}
    assert rows(app) == before


def test_an_old_lease_id_does_not_end_the_same_users_next_lease(app, client, clock):
    first = activate(client, user()).get_json()
    assert release(client, first).status_code == 200
    second = activate(client, first["user_id"]).get_json()
    assert second["lease_id"] != first["lease_id"]
    clock.advance(121)  # the second lease expired; a third begins on the same token or another
    third = activate(client, first["user_id"]).get_json()
    assert third["lease_id"] not in (first["lease_id"], second["lease_id"])
    before = rows(app)
    for stale in (first, second):
        for op in OPS:
            r = call(client, op, third, {"user_id": third["user_id"], "lease_id": stale["lease_id"]})
            assert_error(r, 409, "CONFLICT")
    assert rows(app) == before
    assert renew(client, third).get_json()["lease_id"] == third["lease_id"]


def test_each_lease_id_is_stored_on_its_token_and_usage_and_cleared_when_it_ends(app, client, clock):
    lease = activate(client, user()).get_json()
    assert stored_lease_ids(app, lease["token_id"]) == (lease["lease_id"], lease["lease_id"])
    renewed = renew(client, lease).get_json()
    assert renewed["lease_id"] == lease["lease_id"]
    release(client, lease)
    assert stored_lease_ids(app, lease["token_id"]) == (None, None)
    for _ in range(3):  # expiry, eviction and clearing end leases too
        activate(client, user())
    clock.advance(121)
    leases = [activate(client, user()).get_json() for _ in range(6)]  # 5 tokens: one eviction
    client.delete("/api/tokens/active")
    for held in leases:
        assert stored_lease_ids(app, held["token_id"]) == (None, None)
    with app.app_context(), db.engine.connect() as conn:
        assert_invariants(conn, 5)
        stored = conn.execute(text("SELECT lease_id FROM token_usages WHERE lease_id IS NOT NULL")).scalars()
        assert len({str(v) for v in stored}) == 1 + 3 + 6  # one per lease, never reused


def test_a_repeated_activation_returns_the_lease_without_its_lease_id(client, clock):
    u = user()
    first = activate(client, u).get_json()
    clock.advance(5)
    again = activate(client, u)
    assert again.status_code == 200
    assert "lease_id" not in again.get_json() and first["lease_id"] not in again.get_data(as_text=True)
    assert again.get_json()["token_id"] == first["token_id"]


@with_admin_key
def test_an_admin_key_sees_the_lease_id_of_a_repeated_activation(client):
    u = user()
    first = activate(client, u).get_json()
    assert activate(client, u, headers=ADMIN).get_json()["lease_id"] == first["lease_id"]
    assert "lease_id" not in activate(client, u).get_json()


def read_everything(client, lease: dict, **kwargs) -> dict:
    """Every read of the token API that shows this lease's token, as parsed JSON by name."""
    tid = lease["token_id"]
    return {
        name: client.get(path, **kwargs)
        for name, path in {
            "list": "/api/tokens",
            "active": "/api/tokens?state=active",
            "token": f"/api/tokens/{tid}",
            "usages": f"/api/tokens/{tid}/usages",
            "summary": "/api/tokens/summary",
        }.items()
    }


@pytest.fixture
def client_key(app):
    """A stored key of the `client` role; deleted afterwards (other tests expect no stored key)."""
    key = run_transaction_in(app, apikeys.create, name=f"lease-ids-{uuid.uuid4().hex[:8]}", role="client")
    yield key
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_keys"))


def run_transaction_in(app, fn, **kwargs):
    with app.app_context():
        return run_transaction(fn, **kwargs)


@with_admin_key
def test_reads_never_show_a_lease_id_except_to_admin_keys(client, client_key):
    lease = activate(client, user()).get_json()
    ended = activate(client, user()).get_json()
    release(client, ended)
    for headers in ({}, {"X-API-Key": client_key}, {"Authorization": f"Bearer {client_key}"}):
        for name, r in read_everything(client, lease, headers=headers).items():
            assert r.status_code == 200, (name, r.get_data(as_text=True))
            assert "lease_id" not in r.get_data(as_text=True), (name, headers)
        usages = client.get(f"/api/tokens/{ended['token_id']}/usages", headers=headers)
        assert "lease_id" not in usages.get_data(as_text=True)

    seen = {name: r.get_json() for name, r in read_everything(client, lease, headers=ADMIN).items()}
    listed = {t["token_id"]: t for t in seen["list"]["tokens"]}
    assert listed[lease["token_id"]]["lease_id"] == lease["lease_id"]
    assert all("lease_id" not in t for t in listed.values() if t["state"] == "available")
    assert [t["lease_id"] for t in seen["active"]["tokens"]] == [lease["lease_id"]]
    assert seen["token"]["lease_id"] == lease["lease_id"]
    assert [u["lease_id"] for u in seen["usages"]["usages"]] == [lease["lease_id"]]
    assert "lease_id" not in seen["summary"]
    ended_usages = client.get(f"/api/tokens/{ended['token_id']}/usages", headers=ADMIN).get_json()
    assert [u["lease_id"] for u in ended_usages["usages"]] == [ended["lease_id"]]
    assert client.post(f"/api/tokens/{lease['token_id']}/release", headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("UPDATE tokens SET lease_id = NULL WHERE current_user_id IS NOT NULL", "holder_has_lease_id"),
        (
            "UPDATE tokens SET current_user_id = id, activated_at = expires_at WHERE current_user_id IS NULL",
            "holder_has_lease_id",
        ),
        ("UPDATE token_usages SET lease_id = NULL WHERE ended_at IS NULL", "open_has_lease_id"),
    ],
)
def test_the_database_refuses_a_holder_or_open_lease_without_a_lease_id(app, client, sql, rule):
    activate(client, user())
    with app.app_context(), pytest.raises(IntegrityError, match=rule), db.engine.begin() as conn:
        conn.execute(text(sql))


def test_the_previous_releases_statements_still_run_on_this_schema(app, client, is_postgres):
    """A rolling upgrade: instances of the previous release share the upgraded database."""
    lease = activate(client, user()).get_json()
    with app.app_context(), db.engine.begin() as conn:
        if is_postgres:  # its activation: the four columns it knows, by name
            old = text(
                "SELECT token_id, activated_at, expires_at, outcome"
                " FROM tokenpool_activate(:u, NULL, make_interval(secs => 120))"
            )
            assert conn.execute(old, {"u": uuid.uuid4()}).one().outcome == "available"
        tid = _param(conn, uuid.UUID(lease["token_id"]))
        conn.execute(  # its release: closes the usage and clears only current_user_id
            text("UPDATE token_usages SET ended_at = started_at, end_reason = 'released' WHERE token_id=:t"),
            {"t": tid},
        )
        conn.execute(text("UPDATE tokens SET current_user_id = NULL WHERE id = :t"), {"t": tid})
    assert client.get(f"/api/tokens/{lease['token_id']}").get_json()["state"] == "available"
    assert activate(client, user()).status_code == 200
