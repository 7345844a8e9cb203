"""The bodies of the pools API, described once for the OpenAPI document (service.validate checks input)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from ..openapi import Body, CanonicalUUID, absent
from .service import MAX_LIFETIME, MAX_SIZE

POOL = {
    "name": "pool",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
}
FORCE = {
    "name": "force",
    "in": "query",
    "description": "true: end the pool's open leases (reason cleared) and delete it",
    "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
}
USER_ID = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
LEASE_STATE = {
    "name": "state",
    "in": "query",
    "schema": {"type": "string", "enum": ["active", "all"], "default": "all"},
}
Policy = Literal["evict", "reject", "queue"]


class PoolSettings(Body):
    """PATCH /api/pools/<name>: any setting but the name (the default pool's size,
    lifetime and policy come from the settings)."""

    size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SIZE,
        description="Growing adds tokens at once; "
        "shrinking retires free tokens first, leased ones when their lease ends",
    )
    lifetime_seconds: int | None = Field(default=None, ge=1, le=MAX_LIFETIME)
    policy: Policy | None = Field(default=None, description="What activation on a full pool does")
    max_lifetime_seconds: int | None = Field(
        default=None, ge=1, description="null, or at least lifetime_seconds: renewals stop there"
    )
    max_queue: int | None = Field(default=None, ge=0)
    max_wait_seconds: int | None = Field(default=None, ge=1, le=MAX_LIFETIME)


class PoolCreate(PoolSettings):
    """POST /api/pools."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    size: int = Field(ge=1, le=MAX_SIZE)
    lifetime_seconds: int = Field(ge=1, le=MAX_LIFETIME)


class Pool(Body):
    """A pool: its settings, its last fencing token and its counts."""

    name: str
    size: int
    lifetime_seconds: int
    max_lifetime_seconds: int | None
    policy: Literal["evict", "reject", "queue"]
    max_queue: int
    max_wait_seconds: int
    fencing_token: int = Field(description="The last fencing token granted in the pool")
    created_at: datetime
    total: int = Field(description="Tokens that are not retired")
    active: int = Field(description="Running leases (a retired token's too, until it ends)")
    available: int
    queued: int
    utilization: float


class PoolPage(Body):
    """A page of pools, by name."""

    pools: list[Pool]
    next_cursor: str | None


class UserLease(Body):
    """One lease of a user, in any pool; end_reason null while it runs."""

    pool: str
    token_id: CanonicalUUID
    fencing_token: int | None = Field(description="null for leases that ended before pools existed")
    started_at: datetime
    expires_at: datetime | None = Field(description="While the lease runs")
    ended_at: datetime | None
    end_reason: Literal["released", "expired", "evicted", "cleared"] | None


class UserLeasePage(Body):
    """A page of a user's leases, newest first."""

    user_id: CanonicalUUID
    leases: list[UserLease]
    next_cursor: str | None


TICKET_ID = {
    "name": "ticket_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
TICKET_USER = {
    "name": "user_id",
    "in": "query",
    "description": "The ticket's user: a granted ticket then shows its lease_id (admins see it always)",
    "schema": {"type": "string", "format": "uuid"},
}


class Ticket(Body):
    """A place in a full `queue` pool's queue."""

    ticket_id: CanonicalUUID = Field(description="Random; given only to the user who queued")
    pool: str
    user_id: CanonicalUUID
    status: Literal["waiting", "granted", "cancelled", "expired"]
    queued_at: datetime
    expires_at: datetime = Field(
        description="Waiting: when the wait ends (queued_at + max_wait_seconds); granted: when the lease ends"
    )
    position: int = absent("Waiting: 1 is the head of the queue")
    token_id: CanonicalUUID = absent("Granted: the leased token")
    fencing_token: int = absent("Granted: the lease's fencing token")
    activated_at: datetime = absent("Granted: the lease starts at the grant")
    lease_id: CanonicalUUID = absent(
        "Granted, to the ticket's user (user_id in the query or body) and to admin keys only"
    )


class TicketHolder(Body):
    """DELETE of a ticket: its user (or no body, with the admin key)."""

    user_id: CanonicalUUID
