"""API key records. Keys are stored as SHA-256 hashes; lookups are by hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, update

from ..errors import Conflict, NotFound, ValidationError
from ..invalidation import bump
from ..models import ApiKey
from ..timeutil import utcnow

api_keys = ApiKey.__table__
ROLES = ("admin", "client")


@dataclass(frozen=True)
class Identity:
    """Who a valid key belongs to, as the request sees it."""

    name: str
    role: str
    per_minute: int | None = None
    per_hour: int | None = None


def hash_key(key: str) -> str:
    """The stored form of an API key: its SHA-256 hex digest."""
    return hashlib.sha256(key.encode()).hexdigest()


def create(conn: Connection, *, name: str, role: str, per_minute=None, per_hour=None) -> str:
    """Store a new key and return it; it is never retrievable again. Raises ValidationError, Conflict."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 64:
        raise ValidationError("name must be 1 to 64 characters")
    if conn.scalar(select(api_keys.c.id).where(api_keys.c.name == name)) is not None:
        raise Conflict(f"an API key named {name!r} exists already")
    key = "tp_" + secrets.token_urlsafe(32)
    conn.execute(
        insert(api_keys).values(
            name=name,
            role=role,
            key_hash=hash_key(key),
            created_at=utcnow(),
            rate_limit_per_minute=per_minute,
            rate_limit_per_hour=per_hour,
        )
    )
    bump(conn)  # a process may remember this key as unknown
    return key


def lookup(conn: Connection, key: str) -> tuple[Identity | None, str | None]:
    """(identity, None) for a valid key; (None, name) for a revoked one; (None, None) if unknown."""
    row = conn.execute(select(api_keys).where(api_keys.c.key_hash == hash_key(key))).one_or_none()
    if row is None:
        return None, None
    if row.revoked_at is not None:
        return None, row.name
    return Identity(row.name, row.role, row.rate_limit_per_minute, row.rate_limit_per_hour), None


def touch(conn: Connection, name: str) -> None:
    """Record that the key was used just now."""
    conn.execute(update(api_keys).where(api_keys.c.name == name).values(last_used_at=utcnow()))


def list_keys(conn: Connection) -> list[dict]:
    """Every key's record, without the key or its hash."""
    columns = [c for c in api_keys.c if c.name != "key_hash"]
    return [dict(r._mapping) for r in conn.execute(select(*columns).order_by(api_keys.c.name))]


def revoke(conn: Connection, name: str) -> None:
    """Revoke the key named `name`. Raises NotFound."""
    done = conn.execute(
        update(api_keys)
        .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    ).rowcount
    if not done:
        raise NotFound(f"no active API key named {name!r}")
    bump(conn)  # every process forgets the key within invalidation.CHECK_SECONDS


def active_count(conn: Connection) -> int:
    """How many API keys are not revoked."""
    return conn.execute(
        select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
    ).scalar_one()
