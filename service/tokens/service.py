"""Leasing, releasing, renewing, clearing, sweeping and seeding the token pool (the writes).

Every public function takes an open Connection inside a transaction (see
`service.db.run_transaction`) and never sees an HTTP request. `now` is the
one clock of a decision: None means the database's clock on PostgreSQL (so
instances with skewed clocks agree) and the process clock on SQLite; tests
pass their own.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, DateTime, func, insert, literal, select, text, update

from ..db import is_postgres
from ..errors import Conflict, NotFound, ServiceUnavailable
from ..events.outbox import record_event
from ..models import EPOCH, SweeperState, Token, TokenUsage
from ..timeutil import as_utc, utcnow
from .reads import get_token

tokens = Token.__table__
usages = TokenUsage.__table__
sweeper_state = SweeperState.__table__

SWEEP_BATCH = 5000
# the hot path: one statement, sent as is (no SQL compilation per request)
ACTIVATE_SQL = (
    "SELECT token_id, activated_at, expires_at, outcome, lease_id"
    " FROM tokenpool_activate(%(user_id)s, %(now)s, make_interval(secs => %(lifetime)s))"
)
SEED_BATCH = 50_000


class PoolEmpty(ServiceUnavailable):
    """The pool holds no token at all: run `flask tokens seed`."""


@dataclass(frozen=True)
class Lease:
    """What `activate` granted (or returned again); times are aware UTC datetimes."""

    token_id: uuid.UUID
    user_id: uuid.UUID
    activated_at: datetime
    expires_at: datetime
    outcome: str  # existing | available | expired | evicted
    lease_id: uuid.UUID  # the holder's secret: show it only to its holder (and admins)


@dataclass(frozen=True)
class SweepResult:
    """One sweep: whether it ran, how many expired leases it closed, and its decision time (UTC)."""

    ran: bool  # False when another runner swept moments ago
    expired: int
    at: datetime


def resolve_now(conn: Connection, now: datetime | None) -> datetime:
    """The decision time: the given clock, else the database's (PostgreSQL) or ours.

    Writers call it after taking their row locks, so a lease never ends
    before it started even when another transaction committed meanwhile.
    """
    if now is not None:
        return as_utc(now)
    if is_postgres(conn):
        return as_utc(conn.execute(select(func.clock_timestamp())).scalar_one())
    return utcnow()


def _at(now: datetime):
    return literal(now, DateTime(timezone=True))


def new_lease_id() -> uuid.UUID:
    """A fresh lease id: a random UUID (122 bits from the OS's CSPRNG), as PostgreSQL's gen_random_uuid."""
    return uuid.uuid4()


def _end_lease(conn: Connection, token_id, ended_at: datetime, reason: str) -> None:
    conn.execute(
        update(usages)
        .where(usages.c.token_id == token_id, usages.c.ended_at.is_(None))
        .values(ended_at=ended_at, end_reason=reason)
    )
    conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id)
        .values(current_user_id=None, lease_id=None, expires_at=ended_at, released_at=ended_at)
    )


# --- activation ---------------------------------------------------------------


def activate(conn: Connection, user_id: uuid.UUID, *, lifetime: int, now: datetime | None = None) -> Lease:
    """Lease a token to `user_id`: theirs if they hold one, else a free one, else evict.

    A new lease gets a new `lease_id`; the user's running lease keeps its own
    (outcome `existing`). On PostgreSQL this is one statement (safe to run in
    autocommit). Raises PoolEmpty when the pool has no token at all.
    """
    if is_postgres(conn):
        row = conn.exec_driver_sql(
            ACTIVATE_SQL, {"user_id": user_id, "now": now, "lifetime": lifetime}
        ).first()
        if row is None:
            raise PoolEmpty("The token pool is empty. Run `flask tokens seed`.", reason="pool_empty")
        return Lease(
            row.token_id, user_id, as_utc(row.activated_at), as_utc(row.expires_at), row.outcome, row.lease_id
        )
    return _activate_portable(conn, user_id, lifetime=lifetime, now=resolve_now(conn, now))


def _activate_portable(conn: Connection, user_id, *, lifetime: int, now: datetime) -> Lease:
    """The steps of the PostgreSQL function `tokenpool_activate`, in Core statements."""
    own = conn.execute(
        select(tokens.c.id, tokens.c.activated_at, tokens.c.expires_at, tokens.c.lease_id)
        .where(tokens.c.current_user_id == user_id)
        .with_for_update()
    ).one_or_none()
    if own is not None:
        if as_utc(own.expires_at) > now:
            activated_at, expires_at = as_utc(own.activated_at), as_utc(own.expires_at)
            return Lease(own.id, user_id, activated_at, expires_at, "existing", own.lease_id)
        _end_lease(conn, own.id, as_utc(own.expires_at), "expired")

    first_free = (
        select(tokens.c.id, tokens.c.current_user_id, tokens.c.expires_at)
        .order_by(tokens.c.expires_at, tokens.c.id)
        .limit(1)
    )
    candidate = conn.execute(first_free.with_for_update(skip_locked=True)).one_or_none()
    if candidate is None:
        candidate = conn.execute(first_free.with_for_update()).one_or_none()
    if candidate is None:
        raise PoolEmpty("The token pool is empty. Run `flask tokens seed`.", reason="pool_empty")

    outcome = "available"
    if candidate.current_user_id is not None:
        held_until = as_utc(candidate.expires_at)
        outcome = "expired" if held_until <= now else "evicted"
        _end_lease(conn, candidate.id, min(held_until, now), outcome)

    expires_at = now + timedelta(seconds=lifetime)
    lease_id = new_lease_id()
    conn.execute(
        update(tokens)
        .where(tokens.c.id == candidate.id)
        .values(current_user_id=user_id, lease_id=lease_id, activated_at=now, expires_at=expires_at)
    )
    conn.execute(
        insert(usages).values(token_id=candidate.id, user_id=user_id, started_at=now, lease_id=lease_id)
    )
    return Lease(candidate.id, user_id, now, expires_at, outcome, lease_id)


# --- release, renew, clear ---------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Who asks to end or extend a lease: the holder's `user_id` and the lease's secret `lease_id`."""

    user_id: uuid.UUID
    lease_id: uuid.UUID


def _lock_held_token(conn: Connection, token_id, holder: Holder | None, now: datetime | None):
    """Lock the token; check it is active and, unless `holder` is None (an admin), that
    `holder` presents its current lease: the holding `user_id` and that lease's `lease_id`.

    Returns (row, decision time). Raises NotFound, Conflict.
    """
    row = conn.execute(select(tokens).where(tokens.c.id == token_id).with_for_update()).one_or_none()
    now = resolve_now(conn, now)
    if row is None:
        raise NotFound("Token not found", details={"token_id": str(token_id)}, reason="token_not_found")
    if row.current_user_id is None or as_utc(row.expires_at) <= now:
        raise Conflict("Token is not active", details={"token_id": str(token_id)}, reason="not_active")
    if holder is None:
        return row, now
    if row.current_user_id != holder.user_id:
        raise Conflict(
            "Token is held by another user",
            details={"token_id": str(token_id), "user_id": str(holder.user_id)},
            reason="not_holder",
        )
    if not hmac.compare_digest(row.lease_id.bytes, holder.lease_id.bytes):
        # never echo either id: the presented one may be a guess, the right one is the secret
        raise Conflict(
            "lease_id does not match the token's current lease",
            details={"token_id": str(token_id), "field": "lease_id"},
            reason="wrong_lease",
        )
    return row, now


def release(
    conn: Connection, token_id, *, holder: Holder | None = None, now: datetime | None = None
) -> tuple[dict, uuid.UUID]:
    """End an active lease: by its holder (`holder`), or by an admin (None).

    Returns the token and the user whose lease ended. Raises NotFound, Conflict.
    """
    row, now = _lock_held_token(conn, token_id, holder, now)
    _end_lease(conn, token_id, now, "released")
    return get_token(conn, token_id, now=now), row.current_user_id


def renew(conn: Connection, token_id, *, holder: Holder, lifetime: int, now: datetime | None = None) -> dict:
    """Extend the holder's lease to now + lifetime; the lease keeps its `lease_id`.

    Raises NotFound, Conflict.
    """
    _, now = _lock_held_token(conn, token_id, holder, now)
    conn.execute(
        update(tokens).where(tokens.c.id == token_id).values(expires_at=now + timedelta(seconds=lifetime))
    )
    record_event(conn, "renewed", at=now, token_id=token_id, user_id=holder.user_id)
    return get_token(conn, token_id, now=now)


def _close_expired(conn: Connection, token_ids) -> None:
    """Close the usages of these (locked, expired) tokens at their true end and free them."""
    if not token_ids:
        return
    ended = select(tokens.c.expires_at).where(tokens.c.id == usages.c.token_id).scalar_subquery()
    conn.execute(
        update(usages)
        .where(usages.c.token_id.in_(token_ids), usages.c.ended_at.is_(None))
        .values(ended_at=ended, end_reason="expired")
    )
    conn.execute(
        update(tokens)
        .where(tokens.c.id.in_(token_ids))
        .values(current_user_id=None, lease_id=None, released_at=tokens.c.expires_at)
    )


def clear_active(conn: Connection, *, now: datetime | None = None) -> int:
    """End every active lease (reason `cleared`); expired ones close as `expired`.

    Returns how many active leases were cleared.
    """
    held = conn.execute(
        select(tokens.c.id, tokens.c.expires_at)
        .where(tokens.c.current_user_id.is_not(None))
        .with_for_update()
    ).all()
    now = resolve_now(conn, now)
    expired = [r.id for r in held if as_utc(r.expires_at) <= now]
    active = [r.id for r in held if as_utc(r.expires_at) > now]
    _close_expired(conn, expired)
    for start in range(0, len(active), SWEEP_BATCH):
        chunk = active[start : start + SWEEP_BATCH]
        conn.execute(
            update(usages)
            .where(usages.c.token_id.in_(chunk), usages.c.ended_at.is_(None))
            .values(ended_at=now, end_reason="cleared")
        )
        conn.execute(
            update(tokens)
            .where(tokens.c.id.in_(chunk))
            .values(current_user_id=None, lease_id=None, expires_at=now, released_at=now)
        )
    return len(active)


# --- sweeper -------------------------------------------------------------------


def sweep(conn: Connection, *, now: datetime | None = None, min_gap_seconds: float = 0) -> SweepResult:
    """Close the usages of every expired lease, with `ended_at = expires_at`.

    Safe with any number of concurrent runners: the `sweeper_state` row is the
    lock, and a runner that finds a sweep younger than `min_gap_seconds`
    skips. Records the run's time for the health check.
    """
    now = resolve_now(conn, now)
    last_run_at = sweeper_state.c.last_run_at
    claimed = conn.execute(
        update(sweeper_state)
        .where(sweeper_state.c.id == 1)
        .where(last_run_at.is_(None) | (last_run_at <= _at(now - timedelta(seconds=min_gap_seconds))))
        .values(last_run_at=now)
    ).rowcount
    if not claimed:
        return SweepResult(ran=False, expired=0, at=now)
    expired_total = 0
    while True:
        batch = (
            conn.execute(
                select(tokens.c.id)
                .where(tokens.c.current_user_id.is_not(None), tokens.c.expires_at <= _at(now))
                .order_by(tokens.c.expires_at)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        _close_expired(conn, batch)
        expired_total += len(batch)
        if len(batch) < SWEEP_BATCH:
            break
    conn.execute(
        update(sweeper_state).where(sweeper_state.c.id == 1).values(last_expired_count=expired_total)
    )
    return SweepResult(ran=True, expired=expired_total, at=now)


def last_sweep_at(conn: Connection) -> datetime | None:
    """When the token manager last finished a sweep (any worker, any instance)."""
    return as_utc(conn.scalar(select(sweeper_state.c.last_run_at).where(sweeper_state.c.id == 1)))


# --- seeding -------------------------------------------------------------------


def seed(conn: Connection, size: int, *, progress=None) -> int:
    """Top the pool up to `size` tokens; never deletes. Returns how many were added."""
    if is_postgres(conn):  # concurrent seeders queue instead of both topping up
        conn.execute(text("SELECT pg_advisory_xact_lock(7316001)"))
    have = conn.execute(select(func.count()).select_from(tokens)).scalar_one()
    missing = max(0, size - have)
    created_at = utcnow()
    added = 0
    while added < missing:
        n = min(SEED_BATCH, missing - added)
        if is_postgres(conn):
            conn.execute(
                text(
                    "INSERT INTO tokens (id, expires_at, created_at) "
                    "SELECT gen_random_uuid(), :epoch, :created FROM generate_series(1, :n)"
                ),
                {"epoch": EPOCH, "created": created_at, "n": n},
            )
        else:
            conn.execute(
                insert(tokens),
                [{"id": uuid.uuid4(), "expires_at": EPOCH, "created_at": created_at} for _ in range(n)],
            )
        added += n
        if progress:
            progress(added, missing)
    return added
