"""Tables of the pools. The invariants of a pool (docs/API.md, section 1) live here, in the schema.

- a token belongs to one pool (`pool_id`); its usages are its pool's;
- a token has at most one open usage: partial unique index on open usages;
- a user holds at most one token per pool: partial unique index on
  (`pool_id`, `current_user_id`);
- active tokens never exceed the pool: a lease is a column of a token row,
  a retired token takes no new lease (`activated_at <= retired_at`), and a
  pool never holds more tokens that are not retired than its `size`
  (`pools.total`, kept by triggers of migration 0007, and a check);
- a held token carries its lease's `lease_id` (the holder's proof of
  holdership) and `fencing_token`, and its open usage carries the same ones.

`expires_at` is never null: a token that was never leased carries the epoch,
and a released token the moment it was released. So "available" is exactly
`expires_at <= now`, and ordering by `expires_at` gives both the least
recently released available token and, when none is free, the lease that
ends first (the one to evict). One index serves both.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Table, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .extensions import db

if TYPE_CHECKING:  # db.Model is a value built at run time; mypy reads the declarative base it is

    class Model(DeclarativeBase):
        """What db.Model is to mypy."""

        __table__: ClassVar[Table]  # every model here maps one plain table

else:
    Model = db.Model

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


POLICIES = ("evict", "reject", "queue")
DEFAULT_POOL = "default"
DEFAULT_POOL_ID = 1  # created by migration 0007; owns every token created before pools existed


class Pool(Model):
    """A named pool: its size, lease lifetimes, what a full pool does, and its fencing counter.

    `fencing_token` is the last fencing token granted in the pool: every grant
    increments it in its own transaction, so it only grows.
    """

    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    lifetime_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    max_lifetime_seconds: Mapped[int | None] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(8), nullable=False)
    max_queue: Mapped[int] = mapped_column(Integer, nullable=False)
    max_wait_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    fencing_token: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # tokens of the pool that are not retired: kept by triggers on tokens (migration 0007)
    total: Mapped[int] = mapped_column(Integer, nullable=False, server_default=db.text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        CheckConstraint("size >= 1", name="size_positive"),
        CheckConstraint("total >= 0 AND total <= size", name="total_within_size"),
        CheckConstraint("lifetime_seconds >= 1", name="lifetime_positive"),
        CheckConstraint(
            "max_lifetime_seconds IS NULL OR max_lifetime_seconds >= lifetime_seconds",
            name="max_lifetime_not_shorter",
        ),
        CheckConstraint("policy IN ('evict', 'reject', 'queue')", name="policy_known"),
        CheckConstraint("max_queue >= 0 AND max_wait_seconds >= 1", name="queue_limits"),
        CheckConstraint("fencing_token >= 0", name="fencing_token_not_negative"),
    )


class Token(Model):
    """A token of a pool; its lease (holder, times, lease_id, fencing_token) is columns of its own row."""

    __tablename__ = "tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    current_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # the current lease's secret: set with current_user_id, cleared with it (the check
    # asks only "a holder has one", so code of the previous revision, which clears only
    # current_user_id, keeps working against this schema during a rolling upgrade)
    lease_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # every lease the token ever had (all time, retention or not): one more per usage row
    # inserted, by a trigger in the same transaction (migration 0006)
    usage_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=db.text("0"))
    # no foreign key: SQLite cannot add one to an existing table without rebuilding it
    # (see migration 0007); deleting a pool deletes its tokens in the same transaction
    pool_id: Mapped[int] = mapped_column(Integer, nullable=False, server_default=db.text("1"))
    # the current lease's fencing token (public); stale once the lease ended, like expires_at
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)
    # set when the pool shrank below this token: it takes no new lease
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("current_user_id IS NULL OR activated_at IS NOT NULL", name="holder_has_lease"),
        CheckConstraint("current_user_id IS NULL OR lease_id IS NOT NULL", name="holder_has_lease_id"),
        CheckConstraint(
            "retired_at IS NULL OR activated_at IS NULL OR activated_at <= retired_at",
            name="no_lease_after_retirement",
        ),
        # the sweeper's: held tokens by the end of their lease (free tokens are not in it)
        Index(
            "ix_tokens_held_expires_at",
            "expires_at",
            postgresql_where=db.text("current_user_id IS NOT NULL"),
            sqlite_where=db.text("current_user_id IS NOT NULL"),
        ),
        # the activation's one index: free tokens first, then the lease ending first, per pool
        Index(
            "ix_tokens_pool_id_expires_at_id",
            "pool_id",
            "expires_at",
            "id",
            postgresql_where=db.text("retired_at IS NULL"),
            sqlite_where=db.text("retired_at IS NULL"),
        ),
        Index(
            "uq_tokens_pool_id_current_user_id",
            "pool_id",
            "current_user_id",
            unique=True,
            postgresql_where=db.text("current_user_id IS NOT NULL"),
            sqlite_where=db.text("current_user_id IS NOT NULL"),
        ),
    )


class TokenUsage(Model):
    """One lease of a token: who, from when, until when and why it ended (open while ended_at is null)."""

    __tablename__ = "token_usages"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    token_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(16))
    # the lease's secret; null only on leases that ended before lease ids existed
    lease_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # the lease's fencing token; null only on leases that ended before pools existed
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            "end_reason IS NULL OR end_reason IN ('released', 'expired', 'evicted', 'cleared')",
            name="end_reason_known",
        ),
        CheckConstraint("(ended_at IS NULL) = (end_reason IS NULL)", name="ended_with_reason"),
        CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="ends_after_start"),
        CheckConstraint("ended_at IS NOT NULL OR lease_id IS NOT NULL", name="open_has_lease_id"),
        Index("ix_token_usages_token_id_id", "token_id", "id"),
        Index("ix_token_usages_user_id_id", "user_id", "id"),  # a user's leases, newest first
        Index(
            "uq_token_usages_open_token_id",
            "token_id",
            unique=True,
            postgresql_where=db.text("ended_at IS NULL"),
            sqlite_where=db.text("ended_at IS NULL"),
        ),
    )


EVENT_TYPES = (
    "leased",
    "renewed",
    "released",
    "expired",
    "evicted",
    "cleared",
    "queued",
    "granted",
    "cancelled",
)


class Event(Model):
    """The outbox: one row per lease change, written in the changing transaction.

    `seq` orders the rows as they were written; `event_id`, the public and
    strictly increasing id, is given by `service.events.outbox.publish` in the
    order the rows became visible (null until then). Never the `lease_id`.
    Rows for usages are written by database triggers (migration 0006).
    """

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    pool: Mapped[str] = mapped_column(String(63), nullable=False)
    token_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (
        CheckConstraint("type IN (" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + ")", name="type_known"),
        Index("ix_events_pool_event_id", "pool", "event_id"),
        Index(
            "ix_events_unpublished",
            "seq",
            postgresql_where=db.text("event_id IS NULL"),
            sqlite_where=db.text("event_id IS NULL"),
        ),
    )


class Ticket(Model):
    """A place in a `queue` pool's queue: `id` is the order (first in, first out),
    `ticket_id` the random id its user is given. At most one waiting ticket per
    user per pool; a granted ticket keeps its lease (token, `lease_id`, fencing
    token, start and end). A waiting ticket past `expires_at` is expired.
    """

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    ticket_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False, unique=True)
    pool_id: Mapped[int] = mapped_column(Integer, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    status: Mapped[str] = mapped_column(String(9), nullable=False)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # when it stopped waiting: granted, cancelled or expired
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    token_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lease_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'granted', 'cancelled', 'expired')", name="status_known"),
        CheckConstraint(
            "(status = 'granted') = (token_id IS NOT NULL AND lease_id IS NOT NULL"
            " AND fencing_token IS NOT NULL AND activated_at IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="granted_has_lease",
        ),
        CheckConstraint("(status = 'waiting') = (settled_at IS NULL)", name="settled"),
        CheckConstraint("expires_at > queued_at", name="expires_after_queued"),
        Index(
            "uq_tickets_pool_id_user_id_waiting",
            "pool_id",
            "user_id",
            unique=True,
            postgresql_where=db.text("status = 'waiting'"),
            sqlite_where=db.text("status = 'waiting'"),
        ),
        Index(
            "ix_tickets_pool_id_id_waiting",
            "pool_id",
            "id",
            postgresql_where=db.text("status = 'waiting'"),
            sqlite_where=db.text("status = 'waiting'"),
        ),
        Index(
            "ix_tickets_expires_at_waiting",
            "expires_at",
            postgresql_where=db.text("status = 'waiting'"),
            sqlite_where=db.text("status = 'waiting'"),
        ),
    )


class SweeperState(Model):
    """One row: when the token manager last finished a sweep, shared by every worker."""

    __tablename__ = "sweeper_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_expired_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class CacheGeneration(Model):
    """One row: a number bumped whenever every process must drop its caches (service/invalidation.py)."""

    __tablename__ = "cache_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ApiKey(Model):
    """An API key, stored as the SHA-256 of the key; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    rate_limit_per_hour: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (CheckConstraint("role IN ('admin', 'client')", name="role_known"),)
