"""Canonical forms of the identifiers and numbers a client sends, and nothing looser.

`uuid.UUID()` also takes braces, `urn:uuid:`, surrounding spaces and hyphens
anywhere; `int()` takes spaces, a sign, `_` between digits and any Unicode
digit (Arabic-Indic, fullwidth). The contract (docs/API.md) is narrower: a UUID
is 8-4-4-4-12 hexadecimal digits in either case (RFC 9562 section 4), an integer
is ASCII digits. `canonical_*` return None for anything else, so the caller
chooses the error message; `int_arg` answers with the documented one.
"""

from __future__ import annotations

import re
import uuid

from flask import request

from .errors import ValidationError

UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID = re.compile(UUID_PATTERN)
_DIGITS = re.compile(r"[0-9]{1,20}")  # 20 digits hold every 64-bit value; more is refused unread


def canonical_uuid(value) -> uuid.UUID | None:
    """The UUID written as `value` (a str of 36 characters, 8-4-4-4-12 hex), else None."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return uuid.UUID(value)
    return None


def canonical_int(value, low: int, high: int) -> int | None:
    """The integer written as `value` (a str of ASCII digits) if `low <= n <= high`, else None."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
        if low <= number <= high:
            return number
    return None


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """`?name=` as an integer of ASCII digits in `low..high`; `default` when absent.

    Raises ValidationError "Invalid <name>. Must be an integer between <low> and <high>."
    """
    raw = request.args.get(name)
    if raw is None:
        return default
    value = canonical_int(raw, low, high)
    if value is None:
        raise ValidationError(
            f"Invalid {name}. Must be an integer between {low} and {high}.", details={"field": name}
        )
    return value
