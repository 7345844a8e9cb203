"""Named pools: administration, policies when full, fencing tokens, shrinking, a user's leases."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError

from service.extensions import db
from service.models import Pool, Token
from tests.helpers import assert_error, proof, user


def make_pool(client, name="gpu", size=2, lifetime=60, **settings):
    body = {"name": name, "size": size, "lifetime_seconds": lifetime} | settings
    r = client.post("/api/pools", json=body)
    assert r.status_code == 201, r.get_json()
    return r


def take(client, pool, user_id):
    return client.post(f"/api/pools/{pool}/tokens/activate", json={"user_id": user_id})


def test_create_answers_201_with_location_and_counts(client):
    r = make_pool(client, "gpu-a100", size=3, lifetime=30, policy="reject", max_lifetime_seconds=90)
    assert r.headers["Location"] == "/api/pools/gpu-a100"
    pool = r.get_json()
    assert {k: pool[k] for k in ("name", "size", "lifetime_seconds", "max_lifetime_seconds", "policy")} == {
        "name": "gpu-a100",
        "size": 3,
        "lifetime_seconds": 30,
        "max_lifetime_seconds": 90,
        "policy": "reject",
    }
    assert (pool["total"], pool["active"], pool["available"], pool["queued"]) == (3, 0, 3, 0)
    assert pool["max_queue"] == 1000 and pool["max_wait_seconds"] == 300
    assert client.get("/api/pools/gpu-a100").get_json() == pool


def test_create_refuses_a_taken_name_and_bad_settings(client):
    make_pool(client, "a")
    assert_error(
        client.post("/api/pools", json={"name": "a", "size": 1, "lifetime_seconds": 1}), 409, "CONFLICT"
    )
    for body, field in (
        ({"size": 1, "lifetime_seconds": 1}, "name"),
        ({"name": "Bad", "size": 1, "lifetime_seconds": 1}, "name"),
        ({"name": "b", "size": 0, "lifetime_seconds": 1}, "size"),
        ({"name": "b", "size": 1_000_001, "lifetime_seconds": 1}, "size"),
        ({"name": "b", "size": 1, "lifetime_seconds": 86_401}, "lifetime_seconds"),
        ({"name": "b", "size": 1, "lifetime_seconds": True}, "lifetime_seconds"),
        ({"name": "b", "size": 1, "lifetime_seconds": 10, "max_lifetime_seconds": 5}, "max_lifetime_seconds"),
        ({"name": "b", "size": 1, "lifetime_seconds": 10, "policy": "lottery"}, "policy"),
        ({"name": "b", "size": 1, "lifetime_seconds": 10, "colour": "red"}, "colour"),
    ):
        body = assert_error(client.post("/api/pools", json=body), 400, "VALIDATION_ERROR")
        assert body["details"]["field"] == field


def test_list_pages_by_name_with_a_cursor(client):
    for name in ("c", "a", "b"):
        make_pool(client, name, size=1)
    first = client.get("/api/pools?limit=2").get_json()
    assert [p["name"] for p in first["pools"]] == ["a", "b"]
    rest = client.get(f"/api/pools?limit=2&cursor={first['next_cursor']}").get_json()
    assert [p["name"] for p in rest["pools"]] == ["c", "default"]
    assert rest["next_cursor"] is None
    assert_error(client.get("/api/pools?cursor=abc.def"), 400, "VALIDATION_ERROR", "Invalid cursor.")


def test_unknown_pool_is_404_on_every_route(client):
    assert_error(client.get("/api/pools/nope"), 404, "NOT_FOUND", "Pool not found")
    assert_error(take(client, "nope", user()), 404, "NOT_FOUND", "Pool not found")
    assert_error(client.get("/api/pools/nope/tokens"), 404, "NOT_FOUND", "Pool not found")
    assert_error(client.get("/api/pools/nope/tokens/summary"), 404, "NOT_FOUND")
    assert_error(client.get("/api/pools/NOPE/tokens"), 404, "NOT_FOUND")


def test_evict_policy_says_evicted_and_fencing_tokens_grow(client, clock):
    make_pool(client, "p", size=1)
    first = take(client, "p", user()).get_json()
    assert first["evicted"] is False
    clock.advance(1)
    second = take(client, "p", user()).get_json()
    assert second["evicted"] is True and second["token_id"] == first["token_id"]
    assert second["fencing_token"] > first["fencing_token"]
    usages = client.get(f"/api/pools/p/tokens/{first['token_id']}/usages").get_json()["usages"]
    assert [(u["fencing_token"], u["end_reason"]) for u in usages] == [
        (second["fencing_token"], None),
        (first["fencing_token"], "evicted"),
    ]


def test_reject_policy_answers_409_with_an_honest_retry_after(client, clock):
    make_pool(client, "r", size=1, lifetime=10, policy="reject")
    held = take(client, "r", user()).get_json()
    clock.advance(2.5)
    r = take(client, "r", user())
    body = assert_error(r, 409, "POOL_EXHAUSTED")
    assert r.headers["Retry-After"] == "8"  # 7.5 s left, rounded up
    assert body["details"] == {"pool": "r", "retry_after": 8}
    clock.advance(8)  # waiting exactly Retry-After is enough
    late = take(client, "r", user()).get_json()
    assert late["token_id"] == held["token_id"] and late["evicted"] is False


def test_a_user_holds_one_token_per_pool(client):
    make_pool(client, "x", size=2)
    u = user()
    in_default = client.post("/api/tokens/activate", json={"user_id": u}).get_json()
    in_x = take(client, "x", u).get_json()
    assert in_default["token_id"] != in_x["token_id"]
    again = take(client, "x", u).get_json()
    assert again["token_id"] == in_x["token_id"] and again["fencing_token"] == in_x["fencing_token"]
    assert "lease_id" not in again


def test_stale_fencing_token_is_refused_and_changes_nothing(client, clock):
    make_pool(client, "f", size=1)
    old = take(client, "f", user()).get_json()
    clock.advance(1)
    new = take(client, "f", user()).get_json()  # evicts old
    tid = new["token_id"]
    for action in ("release", "renew"):
        body = proof(new) | {"fencing_token": old["fencing_token"]}
        assert_error(client.post(f"/api/pools/f/tokens/{tid}/{action}", json=body), 409, "STALE_LEASE")
    bad = proof(new) | {"fencing_token": "7"}
    assert_error(client.post(f"/api/pools/f/tokens/{tid}/release", json=bad), 400, "VALIDATION_ERROR")
    token = client.get(f"/api/pools/f/tokens/{tid}").get_json()
    assert token["expires_at"] == new["expires_at"] and token["fencing_token"] == new["fencing_token"]
    body = proof(new) | {"fencing_token": new["fencing_token"]}
    renewed = client.post(f"/api/pools/f/tokens/{tid}/renew", json=body).get_json()
    assert renewed["fencing_token"] == new["fencing_token"]
    assert client.post(f"/api/pools/f/tokens/{tid}/release", json=body).status_code == 200


def test_renew_stops_at_max_lifetime(client, clock):
    make_pool(client, "m", size=1, lifetime=60, max_lifetime_seconds=100)
    lease = take(client, "m", user()).get_json()
    clock.advance(50)
    renewed = client.post(f"/api/pools/m/tokens/{lease['token_id']}/renew", json=proof(lease)).get_json()
    started = lease["activated_at"]
    assert renewed["expires_at"] > lease["expires_at"]
    clock.advance(45)  # now + 60 would pass started_at + 100
    capped = client.post(f"/api/pools/m/tokens/{lease['token_id']}/renew", json=proof(lease)).get_json()
    from datetime import datetime, timedelta

    def parse(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    assert parse(capped["expires_at"]) == parse(started) + timedelta(seconds=100)


def test_growing_adds_tokens_and_shrinking_retires_free_ones_first(client, clock):
    make_pool(client, "s", size=3)
    a = take(client, "s", user()).get_json()
    grown = client.patch("/api/pools/s", json={"size": 5}).get_json()
    assert (grown["size"], grown["total"], grown["active"], grown["available"]) == (5, 5, 1, 4)
    shrunk = client.patch("/api/pools/s", json={"size": 1}).get_json()
    assert (shrunk["size"], shrunk["total"], shrunk["active"], shrunk["available"]) == (1, 1, 1, 0)
    assert client.get(f"/api/pools/s/tokens/{a['token_id']}").get_json()["state"] == "active"
    shrunk_more = client.patch("/api/pools/s", json={"size": 1, "lifetime_seconds": 5}).get_json()
    assert shrunk_more["lifetime_seconds"] == 5


def test_shrinking_below_the_leases_keeps_them_to_their_end(client, clock):
    make_pool(client, "k", size=2, policy="reject")
    a, b = take(client, "k", user()).get_json(), take(client, "k", user()).get_json()
    pool = client.patch("/api/pools/k", json={"size": 1}).get_json()
    assert (pool["total"], pool["active"], pool["available"]) == (1, 2, 0)
    listed = client.get("/api/pools/k/tokens").get_json()["tokens"]
    retired = [t for t in listed if "retired_at" in t]  # the lease ending first is shrunk away
    assert len(listed) == 2 and len(retired) == 1 and retired[0]["state"] == "active"
    assert client.get(f"/api/pools/k/tokens/{retired[0]['token_id']}").get_json()["retired_at"]
    assert_error(take(client, "k", user()), 409, "POOL_EXHAUSTED")
    assert client.post(f"/api/pools/k/tokens/{a['token_id']}/release", json=proof(a)).status_code == 200
    assert client.post(f"/api/pools/k/tokens/{b['token_id']}/release", json=proof(b)).status_code == 200
    pool = client.get("/api/pools/k").get_json()
    assert (pool["total"], pool["active"], pool["available"]) == (1, 0, 1)
    c = take(client, "k", user()).get_json()
    assert_error(take(client, "k", user()), 409, "POOL_EXHAUSTED")  # only one token is leased again
    assert c["token_id"] in (a["token_id"], b["token_id"])
    listed = client.get("/api/pools/k/tokens").get_json()["tokens"]
    assert [t["token_id"] for t in listed] == [c["token_id"]]


def test_default_pool_keeps_its_settings_and_cannot_be_deleted(client):
    assert_error(client.delete("/api/pools/default"), 409, "CONFLICT")
    fixed = assert_error(
        client.patch("/api/pools/default", json={"policy": "reject", "size": 7}), 409, "CONFLICT"
    )
    assert fixed["details"]["fixed"] == ["policy", "size"] and "always evict" in fixed["message"]
    assert client.patch("/api/pools/default", json={"max_lifetime_seconds": None}).status_code == 200
    assert_error(client.patch("/api/pools/default", json={"name": "other"}), 400, "VALIDATION_ERROR")


def test_delete_refuses_open_leases_unless_forced(client):
    make_pool(client, "d", size=1)
    u = user()
    lease = take(client, "d", u).get_json()
    assert_error(client.delete("/api/pools/d"), 409, "CONFLICT")
    assert_error(client.delete("/api/pools/d?force=maybe"), 400, "VALIDATION_ERROR")
    assert client.delete("/api/pools/d?force=true").status_code == 204
    assert_error(client.get("/api/pools/d"), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/tokens/{lease['token_id']}"), 404, "NOT_FOUND")


def test_clear_is_per_pool(client):
    make_pool(client, "c", size=2)
    take(client, "c", user())
    client.post("/api/tokens/activate", json={"user_id": user()})
    assert client.delete("/api/pools/c/tokens/active").get_json() == {"cleared_count": 1, "status": "ok"}
    assert client.get("/api/tokens/summary").get_json()["active"] == 1


def test_tokens_of_one_pool_are_not_found_in_another(client):
    make_pool(client, "o", size=1)
    lease = take(client, "o", user()).get_json()
    assert_error(client.get(f"/api/tokens/{lease['token_id']}"), 404, "NOT_FOUND", "Token not found")
    r = client.post(f"/api/tokens/{lease['token_id']}/release", json=proof(lease))
    assert_error(r, 404, "NOT_FOUND")


def test_user_leases_across_pools_newest_first_with_how_they_ended(client, clock):
    make_pool(client, "one", size=1)
    make_pool(client, "two", size=1)
    u = user()
    first = take(client, "one", u).get_json()
    clock.advance(1)
    take(client, "one", user())  # evicts u from pool one
    clock.advance(1)
    second = take(client, "two", u).get_json()
    leases = client.get(f"/api/users/{u}/leases").get_json()["leases"]
    assert [(x["pool"], x["end_reason"]) for x in leases] == [("two", None), ("one", "evicted")]
    assert leases[0]["fencing_token"] == second["fencing_token"]
    assert leases[1]["token_id"] == first["token_id"] and leases[1]["ended_at"] is not None
    active = client.get(f"/api/users/{u}/leases?state=active").get_json()["leases"]
    assert [x["pool"] for x in active] == ["two"]
    clock.advance(120)  # expired, not yet swept: shown as ended at its expiry
    assert client.get(f"/api/users/{u}/leases?state=active").get_json()["leases"] == []
    ended = client.get(f"/api/users/{u}/leases?limit=1").get_json()
    assert ended["leases"][0]["end_reason"] == "expired"
    assert ended["leases"][0]["ended_at"] == second["expires_at"]
    more = client.get(f"/api/users/{u}/leases?limit=1&cursor={ended['next_cursor']}").get_json()
    assert [x["pool"] for x in more["leases"]] == ["one"]
    assert_error(client.get(f"/api/users/{u}/leases?state=available"), 400, "VALIDATION_ERROR")
    assert_error(client.get("/api/users/nobody/leases"), 400, "VALIDATION_ERROR")


@pytest.mark.options(TOKEN_LIFETIME_SECONDS=77)
def test_default_pool_under_pools_is_api_tokens(client):
    u = user()
    lease = client.post("/api/pools/default/tokens/activate", json={"user_id": u}).get_json()
    assert (
        client.post("/api/tokens/activate", json={"user_id": u}).get_json()["token_id"] == lease["token_id"]
    )
    assert client.get("/api/pools/default/tokens/summary").get_json()["lifetime_seconds"] == 77
    assert client.get("/api/pools/default").get_json()["lifetime_seconds"] == 77


def test_rejections_and_activations_are_counted_by_pool(client):
    make_pool(client, "busy", size=1, policy="reject")
    take(client, "busy", user())
    take(client, "busy", user())
    take(client, "nosuchpool", user())
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tokenpool_activations_total{pool="busy",reason="available",result="success"} 1.0' in text
    assert 'tokenpool_activations_total{pool="busy",reason="pool_exhausted",result="failure"} 1.0' in text
    assert 'tokenpool_activations_total{pool="",reason="pool_not_found",result="failure"} 1.0' in text


def test_cli_mirrors_the_routes(app, client):
    runner = app.test_cli_runner()
    made = runner.invoke(args=["pools", "create", "cli", "--size", "2", "--lifetime-seconds", "30"])
    assert made.exit_code == 0, made.output
    assert '"name": "cli"' in made.output and '"size": 2' in made.output
    assert (
        runner.invoke(args=["pools", "create", "cli", "--size", "2", "--lifetime-seconds", "30"]).exit_code
        == 1
    )
    bad = runner.invoke(args=["pools", "create", "bad", "--size", "0", "--lifetime-seconds", "30"])
    assert bad.exit_code == 1 and "Invalid size" in bad.output
    listed = runner.invoke(args=["pools", "list"])
    assert [line.split('"name": "')[1].split('"')[0] for line in listed.output.splitlines()] == [
        "cli",
        "default",
    ]
    grown = runner.invoke(args=["pools", "update", "cli", "--size", "4", "--policy", "reject"])
    assert grown.exit_code == 0 and '"total": 4' in grown.output and '"policy": "reject"' in grown.output
    take(client, "cli", user())
    assert runner.invoke(args=["pools", "delete", "cli"]).exit_code == 1  # a lease is open
    gone = runner.invoke(args=["pools", "delete", "cli", "--force"])
    assert gone.exit_code == 0 and "1 leases cleared" in gone.output
    assert runner.invoke(args=["pools", "delete", "default"]).exit_code == 1


def test_the_database_refuses_more_tokens_than_the_size_and_leases_on_retired_tokens(app, client, clock):
    make_pool(client, "db", size=2)
    first = take(client, "db", user()).get_json()
    client.patch("/api/pools/db", json={"size": 1})
    with app.app_context(), pytest.raises(IntegrityError):
        with db.engine.begin() as conn:  # a third token in a pool of size 1
            conn.execute(
                insert(Token.__table__).values(
                    id=uuid.uuid4(),
                    pool_id=select(Pool.__table__.c.id)
                    .where(Pool.__table__.c.name == "db")
                    .scalar_subquery(),
                    expires_at=clock(),
                    created_at=clock(),
                )
            )
    retired = client.get("/api/pools/db/tokens?state=all").get_json()["tokens"]
    assert [t["token_id"] for t in retired] == [first["token_id"]]  # the free one was retired
    with app.app_context(), pytest.raises(IntegrityError):
        with db.engine.begin() as conn:  # a new lease on a retired token
            tokens = Token.__table__
            conn.execute(
                update(tokens)
                .where(tokens.c.retired_at.is_not(None))
                .values(
                    current_user_id=uuid.uuid4(), lease_id=uuid.uuid4(), activated_at=clock() + timedelta(1)
                )
            )


def test_health_details_and_database_stats_count_every_pool(client):
    make_pool(client, "seen", size=3, policy="reject")
    take(client, "seen", user())
    stats = client.get("/api/monitoring/database-stats").get_json()
    details = client.get("/health?details=true").get_json()["details"]
    for pools in (stats["pools"], details["pools"]):
        assert set(pools) == {"default", "seen"}
        assert {k: pools["seen"][k] for k in ("size", "policy", "total", "active", "available")} == {
            "size": 3,
            "policy": "reject",
            "total": 3,
            "active": 1,
            "available": 2,
        }


def test_events_name_the_pool_and_carry_the_fencing_token(client, clock):
    make_pool(client, "ev", size=1)
    first = take(client, "ev", user()).get_json()
    clock.advance(1)
    second = take(client, "ev", user()).get_json()  # evicts the first
    renew = client.post(f"/api/pools/ev/tokens/{second['token_id']}/renew", json=proof(second))
    assert renew.status_code == 200
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT type, fencing_token FROM events WHERE pool = 'ev' ORDER BY seq")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("leased", first["fencing_token"]),
        ("evicted", first["fencing_token"]),
        ("leased", second["fencing_token"]),
        ("renewed", second["fencing_token"]),
    ]
