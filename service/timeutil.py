"""UTC helpers: every time the service stores or answers is UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to naive values (SQLite returns them) and convert aware ones."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@overload
def isoformat(value: datetime) -> str: ...
@overload
def isoformat(value: None) -> None: ...
@overload
def isoformat(value: datetime | None) -> str | None: ...


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 in UTC ending in `Z`, or None."""
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")
