"""The bodies of the tokens API (request models validate, answer models document),
input parsing, token serialisation, opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import uuid
from datetime import datetime
from typing import Literal, TypeVar, overload

import orjson
import pydantic
from flask import current_app, request
from pydantic import Field

from ..errors import InvalidJson, UnsupportedMediaType, ValidationError
from ..openapi import UUID_SCHEMA, Body, CanonicalUUID, absent
from ..parsing import canonical_int, canonical_uuid, int_arg
from ..timeutil import isoformat
from .service import Holder

STATES = ("available", "active", "all")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
BIGINT_MAX = 2**63 - 1  # the largest key of a PostgreSQL bigint column
MAX_CURSOR_LENGTH = 256  # an issued cursor is under 150 characters; longer ones are not read
_CURSOR = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}")  # base64url(payload) "." base64url(16-byte MAC)
LEASE_ID = (
    "The lease's secret, given to the caller granted the lease (and shown to admin keys): "
    "release and renew by the holder must present it"
)


TOKEN_ID = {"name": "token_id", "in": "path", "required": True, "schema": UUID_SCHEMA}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
CURSOR = {
    "name": "cursor",
    "in": "query",
    "description": "next_cursor of the previous page of this listing; any other value is a 400",
    "schema": {"type": "string", "maxLength": MAX_CURSOR_LENGTH},
}
STATE = {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES), "default": "all"}}


class Token(Body):
    """A token as every read, release and renew answers it."""

    token_id: CanonicalUUID
    state: Literal["active", "available"]
    current_user_id: CanonicalUUID | None
    activated_at: datetime | None
    expires_at: datetime | None
    released_at: datetime | None
    usage_count: int = absent(
        "On the single-token read and the release and renew answers: leases of all time, retention or not"
    )
    fencing_token: int = absent("An active token's: its lease's fencing token (public)")
    lease_id: CanonicalUUID = absent("An active token's lease_id: only for admin keys, and in renew's answer")
    retired_at: datetime = absent("A token its pool shrank away: it is never leased again")


class RenewedToken(Token):
    """Renew's answer: the token with the lease_id the holder presented."""

    lease_id: CanonicalUUID = Field(description=LEASE_ID)


class Lease(Body):
    """Activation's answer."""

    token_id: CanonicalUUID
    user_id: CanonicalUUID
    activated_at: datetime
    expires_at: datetime
    fencing_token: int = Field(
        description="Greater than every fencing token granted before in this pool; public, "
        "so a resource can refuse a holder whose lease has ended"
    )
    evicted: bool = Field(description="The token was taken from the lease that ended first (policy evict)")
    lease_id: CanonicalUUID = absent(
        "On a new lease; absent when the user's running lease is returned again, "
        "unless the caller has an admin key"
    )


class Usage(Body):
    """One lease of a token's history."""

    usage_id: int
    user_id: CanonicalUUID
    started_at: datetime
    ended_at: datetime | None
    end_reason: Literal["released", "expired", "evicted", "cleared"] | None
    fencing_token: int | None = Field(
        description="The lease's fencing token (null for leases older than pools)"
    )
    lease_id: CanonicalUUID | None = absent("Only for admin keys (null for leases older than lease ids)")


class TokenPage(Body):
    """A page of the token listing; `next_cursor` is null on the last page."""

    tokens: list[Token]
    next_cursor: str | None


class UsagePage(Body):
    """A page of a token's lease history, newest first; `next_cursor` is null on the last page."""

    token_id: CanonicalUUID
    usages: list[Usage]
    next_cursor: str | None


class Summary(Body):
    """The pool's counts; utilization is active / total (0..1); lifetime_seconds: a lease's length."""

    total: int
    active: int
    available: int
    utilization: float
    lifetime_seconds: int


class Cleared(Body):
    """How many active leases an admin clear ended."""

    cleared_count: int
    status: str


def json_body() -> dict:
    """The request's JSON object; `{}` for an empty body.

    Raises RequestEntityTooLarge (over MAX_CONTENT_LENGTH, with or without Content-Length: 413),
    UnsupportedMediaType (a body that is not JSON), InvalidJson, ValidationError.
    """
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    raw = req.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH (service/app.py Request)
    if not raw.strip():
        return {}
    if not req.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json.")
    try:
        body = orjson.loads(raw)  # strict JSON: NaN, Infinity and lone surrogates are refused
    except orjson.JSONDecodeError as exc:  # orjson's reason and the byte where it stopped
        details = {"reason": exc.msg, "position": exc.pos}
        raise InvalidJson("Request body is not valid JSON.", details=details) from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidJson("Request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ValidationError("Request body must be a JSON object.")
    return body


def parse_uuid(value, field: str) -> uuid.UUID:
    """A UUID from its canonical text (8-4-4-4-12 hex digits, either case).

    Raises ValidationError naming the field for anything else (braces, `urn:uuid:`,
    spaces, misplaced hyphens, a non-string).
    """
    parsed = canonical_uuid(value)
    if parsed is None:
        raise ValidationError(
            f"Invalid {field} format. Must be a valid UUID.",
            details={"field": field},
            reason=f"invalid_{field}",
        )
    return parsed


class ActivateBody(Body):
    """POST /api/tokens/activate."""

    user_id: CanonicalUUID


class HolderBody(Body):
    """The holder's proof in a release or renew body."""

    user_id: CanonicalUUID
    lease_id: CanonicalUUID = Field(description=LEASE_ID)
    fencing_token: int | None = Field(
        default=None,
        ge=1,
        description="Optional: when given and not the token's current lease's, 409 STALE_LEASE",
    )


M = TypeVar("M", bound=Body)


def validated(model: type[M], body: dict) -> M:
    """`body` checked against `model` (pydantic-core: as fast as the hand parser it replaced).

    Raises ValidationError for the first field in the model's order, missing or null
    ("Missing required parameter: <field>") or anything else
    ("Invalid <field> format. Must be a valid UUID.").
    """
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        error = exc.errors(include_url=False, include_context=False)[0]
    name = str(error["loc"][0])
    if error["type"] == "missing" or error["input"] is None:
        raise ValidationError(
            f"Missing required parameter: {name}", details={"field": name}, reason=f"missing_{name}"
        )
    raise ValidationError(
        f"Invalid {name} format. Must be a valid UUID.", details={"field": name}, reason=f"invalid_{name}"
    )


def user_id_from(body: dict) -> uuid.UUID:
    """`user_id` of a request body. Raises ValidationError when missing or malformed."""
    return validated(ActivateBody, body).user_id


@overload
def holder_from(body: dict, *, required: Literal[True] = True) -> Holder: ...
@overload
def holder_from(body: dict, *, required: bool) -> Holder | None: ...


def holder_from(body: dict, *, required: bool = True) -> Holder | None:
    """The holder's proof in a release or renew body: `user_id` and `lease_id`, both UUIDs.

    A body with neither is None when not `required` (an admin's release).
    Raises ValidationError naming the first field missing or malformed.
    """
    if not required and body.get("user_id") is None and body.get("lease_id") is None:
        return None
    proof = validated(HolderBody, body)
    return Holder(proof.user_id, proof.lease_id)


def fencing_token_from(body: dict) -> int | None:
    """The optional `fencing_token` of a release or renew body: an integer 1..2**63-1.

    Raises ValidationError when present and not one.
    """
    value = body.get("fencing_token")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= BIGINT_MAX:
        raise ValidationError(
            "Invalid fencing_token. Must be a positive integer.",
            details={"field": "fencing_token"},
            reason="invalid_fencing_token",
        )
    return value


def state_arg() -> str:
    """`?state=` of the listing: available, active or all (the default). Raises ValidationError."""
    state = request.args.get("state", "all")
    if state not in STATES:
        raise ValidationError(
            "Invalid state filter. Must be 'available', 'active', or 'all'.",
            details={"field": "state"},
        )
    return state


def limit_arg(default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`?limit=` of a listing: 1..maximum. Raises ValidationError."""
    return int_arg("limit", default, 1, maximum)


def id_position(value) -> int | None:
    """A keyset position that is a bigint row id, 1..2**63-1 (None when it is not one)."""
    return canonical_int(value, 1, BIGINT_MAX)


@functools.lru_cache(maxsize=4)
def _cursor_key(secret: str) -> bytes:
    """The cursor key: HMAC-SHA256(SECRET_KEY, a fixed label), so SECRET_KEY itself signs nothing here."""
    return hmac.new(secret.encode(), b"tokenpool keyset cursor", hashlib.sha256).digest()


def _cursor_mac(payload: bytes) -> bytes:
    """HMAC-SHA256 of a cursor's payload under the cursor key (first 16 bytes)."""
    return hmac.new(_cursor_key(current_app.config["SECRET_KEY"]), payload, hashlib.sha256).digest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_cursor(kind: str, value) -> str | None:
    """An opaque, signed cursor for the keyset position `value` of the listing `kind`.

    `kind` names the listing exactly (e.g. `usages:<token_id>`), so a cursor is
    accepted only by the listing that issued it. Shape: base64url(JSON payload)
    "." base64url(MAC); the MAC (HMAC-SHA256 keyed from SECRET_KEY) makes a
    cursor that this service did not issue fail before its payload is parsed.
    """
    if value is None:
        return None
    payload = json.dumps({"k": kind, "v": str(value)}, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_cursor_mac(payload))}"


def cursor_arg(kind: str, position):
    """The keyset position of `?cursor=` for the listing `kind`; None when absent.

    `position` turns the issued text back into a position and returns None (or
    raises ValueError/TypeError) when it is not one. Raises ValidationError
    "Invalid cursor." for any cursor this service did not issue for `kind`:
    bad base64, a wrong or missing signature, another listing, a value of the
    wrong type or out of range, an absurd size.
    """
    raw = request.args.get("cursor")
    if not raw:
        return None
    try:
        if len(raw) > MAX_CURSOR_LENGTH or not _CURSOR.fullmatch(raw):
            raise ValueError
        body, mac = raw.split(".")
        payload = _unb64(body)
        if _b64(payload) != body or not hmac.compare_digest(mac, _b64(_cursor_mac(payload))):
            raise ValueError  # only the one spelling this service wrote is accepted
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("k") != kind or not isinstance(data.get("v"), str):
            raise ValueError
        value = position(data["v"])
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        value = None
    if value is None:
        raise ValidationError("Invalid cursor.", details={"field": "cursor"})
    return value


def serialise(obj: dict) -> dict:
    """Times to ISO 8601 `Z` strings, UUIDs to strings."""
    out = {}
    for key, value in obj.items():
        if hasattr(value, "isoformat"):
            value = isoformat(value)
        elif isinstance(value, uuid.UUID):
            value = str(value)
        out[key] = value
    return out
