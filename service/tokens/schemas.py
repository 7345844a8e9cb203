"""Input parsing and validation, token serialisation, opaque keyset cursors."""

from __future__ import annotations

import base64
import binascii
import json
import uuid

import orjson
from flask import request

from ..errors import InvalidJson, UnsupportedMediaType, ValidationError
from ..timeutil import isoformat
from .service import Holder

STATES = ("available", "active", "all")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


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
    """A UUID from a string. Raises ValidationError naming the field."""
    try:
        if not isinstance(value, str):
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError(
            f"Invalid {field} format. Must be a valid UUID.",
            details={"field": field},
            reason=f"invalid_{field}",
        ) from None


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
    raw = request.args.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise ValidationError(
            f"Invalid limit. Must be an integer between 1 and {maximum}.",
            details={"field": "limit"},
        )
    return limit


def encode_cursor(kind: str, value) -> str | None:
    """An opaque cursor for the keyset position `value` of a `kind` listing."""
    if value is None:
        return None
    raw = json.dumps({"k": kind, "v": str(value)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_arg(kind: str, convert):
    """Decode `?cursor=` of a `kind` listing with `convert`; None when absent."""
    raw = request.args.get("cursor")
    if not raw:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if data["k"] != kind:
            raise ValueError
        return convert(data["v"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("Invalid cursor.", details={"field": "cursor"}) from None


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
