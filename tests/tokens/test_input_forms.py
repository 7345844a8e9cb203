"""Only canonical identifiers, numbers and issued cursors are accepted; the rest is a 400, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from urllib.parse import quote

import pytest

from tests.helpers import activate, assert_error, history_on_one_token, user

UUID_MESSAGE = "Invalid {}format. Must be a valid UUID."
CANON = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")

# what uuid.UUID() takes and the contract does not: 8-4-4-4-12 hex digits only
LOOSE_UUIDS = [
    " " + CANON,
    CANON + " ",
    CANON + "\n",
    "+" + CANON,
    "{" + CANON + "}",
    "urn:uuid:" + CANON,
    CANON.replace("-", ""),
    "0f1e2d3c4b5a-4968-8776-a5b4-c3d2e1f0",  # hyphens in the wrong places
    "0f1e-2d3c-4b5a-4968-8776-a5b4-c3d2-e1f0",
    CANON.translate(ARABIC),
    CANON.translate(FULLWIDTH),
    CANON[:-1],
    CANON + "0",
    "0f1e2d3c_4b5a_4968_8776_a5b4c3d2e1f0",
]
LOOSE_INTS = [" 5", "5 ", "+5", "-5", "1_0", "５", "٥", "5.0", "1e1", "0x5", "", "5\n", "9" * 30]


@pytest.mark.parametrize("raw", LOOSE_UUIDS)
def test_loose_user_id_is_refused(client, raw):
    for body in ({"user_id": raw}, {"user_id": raw.upper()}):
        r = client.post("/api/tokens/activate", json=body)
        assert_error(r, 400, "VALIDATION_ERROR", UUID_MESSAGE.format("user_id "))
    assert client.get("/api/tokens/summary").get_json()["active"] == 0


@pytest.mark.parametrize("value", [5, ["x"], {"a": 1}, True, 1.5])
def test_user_id_of_another_json_type_is_refused(client, value):
    r = client.post("/api/tokens/activate", json={"user_id": value})
    assert_error(r, 400, "VALIDATION_ERROR", UUID_MESSAGE.format("user_id "))


def test_canonical_uuid_in_either_case_is_accepted(client):
    u = str(uuid.uuid4())
    lease = activate(client, u.upper()).get_json()
    assert lease["user_id"] == u
    tid = lease["token_id"]
    assert client.get(f"/api/tokens/{tid.upper()}").get_json()["token_id"] == tid
    assert client.get(f"/api/tokens/{tid.upper()}/usages").status_code == 200
    body = {"user_id": u.upper(), "lease_id": lease["lease_id"].upper()}
    assert client.post(f"/api/tokens/{tid.upper()}/renew", json=body).status_code == 200
    assert client.post(f"/api/tokens/{tid.upper()}/release", json=body).status_code == 200


@pytest.mark.parametrize("raw", LOOSE_UUIDS)
def test_loose_lease_id_is_refused_and_changes_nothing(client, raw):
    lease = activate(client, user()).get_json()
    loose = raw.replace(CANON, lease["lease_id"]) if CANON in raw else raw
    for action in ("release", "renew"):
        body = {"user_id": lease["user_id"], "lease_id": loose}
        r = client.post(f"/api/tokens/{lease['token_id']}/{action}", json=body)
        assert_error(r, 400, "VALIDATION_ERROR", UUID_MESSAGE.format("lease_id "))
    token = client.get(f"/api/tokens/{lease['token_id']}").get_json()
    assert token["state"] == "active" and token["expires_at"] == lease["expires_at"]


@pytest.mark.parametrize("raw", LOOSE_UUIDS)
def test_loose_token_id_in_the_path_is_refused(client, raw):
    """A malformed id is a 400 (as before); only its looser spellings are new to the list."""
    token_id = client.get("/api/tokens?limit=1").get_json()["tokens"][0]["token_id"]
    loose = raw.replace(CANON, token_id) if CANON in raw else raw
    path = "/api/tokens/" + quote(loose, safe="")
    message = UUID_MESSAGE.format("token_id ")
    for method, suffix, body in (
        ("GET", "", None),
        ("GET", "/usages", None),
        ("POST", "/release", {"user_id": user(), "lease_id": user()}),
        ("POST", "/renew", {"user_id": user(), "lease_id": user()}),
    ):
        r = client.open(path + suffix, method=method, json=body)
        assert_error(r, 400, "VALIDATION_ERROR", message)


@pytest.mark.parametrize("raw", LOOSE_INTS + ["0", "1001"])
def test_loose_or_out_of_range_limit_is_refused(client, raw):
    token_id = client.get("/api/tokens?limit=1").get_json()["tokens"][0]["token_id"]
    message = "Invalid limit. Must be an integer between 1 and 1000."
    for path in ("/api/tokens", f"/api/tokens/{token_id}/usages"):
        r = client.get(path, query_string={"limit": raw})
        assert_error(r, 400, "VALIDATION_ERROR", message)


def test_ascii_digits_are_a_limit(client):
    assert len(client.get("/api/tokens?limit=2").get_json()["tokens"]) == 2
    assert len(client.get("/api/tokens?limit=002").get_json()["tokens"]) == 2


@pytest.mark.parametrize("raw", LOOSE_INTS)
@pytest.mark.parametrize(("path", "name", "high"), [("metrics", "window", 1440), ("errors", "limit", 100)])
def test_monitoring_numbers_take_ascii_digits_only(client, raw, path, name, high):
    r = client.get(f"/api/monitoring/{path}", query_string={name: raw})
    assert_error(r, 400, "VALIDATION_ERROR", f"Invalid {name}. Must be an integer between 1 and {high}.")
    assert client.get(f"/api/monitoring/{path}", query_string={name: "7"}).status_code == 200


# --- cursors -----------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def sign(payload, secret: str) -> str:
    """A cursor in the documented shape: base64url(JSON) "." base64url(HMAC-SHA256[:16])."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    key = hmac.new(secret.encode(), b"tokenpool keyset cursor", hashlib.sha256).digest()
    return f"{b64(raw)}.{b64(hmac.new(key, raw, hashlib.sha256).digest()[:16])}"


def tampered_cursors(secret: str, kind: str, other_kind: str, good: str) -> list[str]:
    """Cursors this service did not issue for the listing `kind`: each must be a 400."""
    deep = b"[" * 100_000 + b"]" * 100_000
    unsigned = [
        "garbage",
        "e30",
        "eyJrIjoidXNhZ2VzIiwidiI6IjEifQ",
        # the pre-signature shape, with a value past bigint
        "eyJrIjogInVzYWdlcyIsICJ2IjogIjExODA1OTE2MjA3MTc0MTEzMDM0MjQifQ",
        b64(json.dumps({"k": kind, "v": "1"}).encode()),
        b64(deep)[:4000],
        "%%%",
        "." * 10,
        "A" * 10_000,
        good.split(".")[0],  # the payload without its signature
        good + "x",
        good.replace(".", ".A", 1),
        good + "==",
        " " + good,
        good.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
    ]
    signed_wrongly = [
        sign({"k": kind, "v": "1"}, secret + "-other"),  # another deployment's key
        sign({"k": other_kind, "v": good_value(good)}, secret),  # another listing
        sign({"k": kind + "x", "v": "1"}, secret),
        sign({"v": "1"}, secret),
        sign({"k": kind}, secret),
        sign([kind, "1"], secret),
        sign("x", secret),
        sign(b"not json", secret),
        sign(deep[:200], secret),
    ]
    wrong_values = [
        sign({"k": kind, "v": v}, secret)
        for v in (
            1,
            None,
            ["1"],
            {"a": "1"},
            "",
            "0",
            "-1",
            " 1",
            "1_0",
            "+1",
            "١",
            str(2**63),
            "11805916207174113034244",
            "9" * 5000,
            "{" + CANON + "}",
            "urn:uuid:" + CANON,
            CANON.replace("-", ""),
            "not-a-uuid",
        )
    ]
    return unsigned + signed_wrongly + wrong_values


def good_value(cursor: str) -> str:
    payload = cursor.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["v"]


def listings(client, clock):
    """(path, kind, another listing's kind, an issued cursor) for every paginated listing."""
    tid = history_on_one_token(client, clock, releases=2)["token_id"]
    tokens = client.get("/api/tokens").get_json()["tokens"]
    other = next(t["token_id"] for t in tokens if t["token_id"] != tid)
    usages_cursor = client.get(f"/api/tokens/{tid}/usages?limit=1").get_json()["next_cursor"]
    tokens_cursor = client.get("/api/tokens?limit=1").get_json()["next_cursor"]
    assert usages_cursor and tokens_cursor
    return [
        ("/api/tokens", "tokens", f"usages:{tid}", tokens_cursor),
        (f"/api/tokens/{tid}/usages", f"usages:{tid}", "tokens", usages_cursor),
        # a cursor of token `tid`'s history is not one of `other`'s
        (f"/api/tokens/{other}/usages", f"usages:{other}", f"usages:{tid}", usages_cursor),
    ]


def test_tampered_cursors_are_400_on_every_listing(client, app, clock, caplog):
    secret = app.config["SECRET_KEY"]
    for path, kind, other_kind, good in listings(client, clock):
        cases = tampered_cursors(secret, kind, other_kind, good)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for cursor in cases:
                r = client.get(path, query_string={"cursor": cursor})
                assert_error(r, 400, "VALIDATION_ERROR", "Invalid cursor.")
                assert r.get_json()["details"] == {"field": "cursor"}
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], path


def test_issued_cursors_still_walk_their_listing(client, clock):
    for path, _kind, _other, good in listings(client, clock)[:2]:
        r = client.get(path, query_string={"cursor": good, "limit": 1})
        assert r.status_code == 200, r.get_data(as_text=True)


def test_a_cursor_from_another_secret_key_is_refused(client, app, clock):
    tokens_cursor = client.get("/api/tokens?limit=1").get_json()["next_cursor"]
    forged = sign({"k": "tokens", "v": good_value(tokens_cursor)}, app.config["SECRET_KEY"] + "x")
    assert_error(client.get("/api/tokens", query_string={"cursor": forged}), 400, "VALIDATION_ERROR")
    rightly = sign({"k": "tokens", "v": good_value(tokens_cursor)}, app.config["SECRET_KEY"])
    assert rightly == tokens_cursor
