"""Input parsing and validation, token serialisation, opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import uuid

import orjson
from flask import current_app, request

from ..errors import InvalidJson, UnsupportedMediaType, ValidationError
from ..parsing import canonical_int, canonical_uuid, int_arg
from ..timeutil import isoformat
from .service import Holder

STATES = ("available", "active", "all")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
BIGINT_MAX = 2**63 - 1  # the largest key of a PostgreSQL bigint column
MAX_CURSOR_LENGTH = 256  # an issued cursor is under 150 characters; longer ones are not read
_CURSOR = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22}")  # base64url(payload) "." base64url(16-byte MAC)


def json_body() -> dict:
    """The request's JSON object; `{}` for an empty body.

    Raises UnsupportedMediaType (a body that is not JSON), InvalidJson, ValidationError.
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json.")
    try:
        body = orjson.loads(raw)  # strict JSON: NaN, Infinity and lone surrogates are refused
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


def _required_uuid(body: dict, field: str) -> uuid.UUID:
    """The UUID `field` of a request body. Raises ValidationError when missing or malformed."""
    if body.get(field) is None:
        raise ValidationError(
            f"Missing required parameter: {field}",
            details={"field": field},
            reason=f"missing_{field}",
        )
    return parse_uuid(body[field], field)


def user_id_from(body: dict) -> uuid.UUID:
    """`user_id` of a request body. Raises ValidationError when missing or malformed."""
    return _required_uuid(body, "user_id")


def holder_from(body: dict, *, required: bool = True) -> Holder | None:
    """The holder's proof in a release or renew body: `user_id` and `lease_id`, both UUIDs.

    A body with neither is None when not `required` (an admin's release).
    Raises ValidationError naming the first field missing or malformed.
    """
    if not required and body.get("user_id") is None and body.get("lease_id") is None:
        return None
    return Holder(_required_uuid(body, "user_id"), _required_uuid(body, "lease_id"))


def state_arg() -> str:
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
