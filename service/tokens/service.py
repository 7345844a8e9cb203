"""Leasing, releasing, renewing, clearing, sweeping and seeding the tokens of a pool (the writes).

Every change of a lease happens here, in one module: activation (with the
full pool's policy decision), release, renew, clear and the sweep.

Every public function takes an open Connection inside a transaction (see
`service.db.run_transaction`) and never sees an HTTP request. `now` is the
one clock of a decision: None means the database's clock on PostgreSQL (so
instances with skewed clocks agree) and the process clock on SQLite; tests
pass their own.
"""

from __future__ import annotations

import hmac
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, DateTime, func, insert, literal, select, text, update

from ..db import is_postgres
from ..errors import ApiError, Conflict, NotFound, ServiceUnavailable
from ..events.outbox import record_event
from ..models import DEFAULT_POOL, DEFAULT_POOL_ID, EPOCH, Pool, SweeperState, Token, TokenUsage
from ..timeutil import as_utc, utcnow
from .reads import get_token

tokens = Token.__table__
usages = TokenUsage.__table__
pools = Pool.__table__
sweeper_state = SweeperState.__table__

SWEEP_BATCH = 5000
# the hot path: one statement, sent as is (no SQL compilation per request); the
# function finds the pool by name (a unique index), so no lookup precedes it
ACTIVATE_SQL = (
    "SELECT token_id, activated_at, expires_at, outcome, lease_id, fencing_token"
    " FROM tokenpool_activate(%(pool)s::text, %(user_id)s, %(now)s, make_interval(secs => %(lifetime)s))"
)
SEED_BATCH = 10_000  # a statement well within DB_STATEMENT_TIMEOUT_MS on a busy machine


class PoolEmpty(ServiceUnavailable):
    """The pool holds no token at all: run `flask tokens seed`."""


class PoolExhausted(ApiError):
    """A full pool whose policy refuses: retry after `retry_after` seconds (when its earliest lease ends)."""

    code, error_code = 409, "POOL_EXHAUSTED"

    def __init__(self, pool: str, retry_after: int):
        super().__init__(
            f"Pool '{pool}' is exhausted. Retry after {retry_after} seconds.",
            details={"pool": pool, "retry_after": retry_after},
            reason="pool_exhausted",
        )
        self.response_headers = {"Retry-After": str(retry_after)}


class PoolFull(PoolExhausted):
    """A full `queue` pool: the caller queues a ticket (tokens/queue.py `enqueue`)."""

    def __init__(self, pool: str):
        super().__init__(pool, 1)


class StaleLease(ApiError):
    """The presented `fencing_token` is not the token's current lease."""

    code, error_code = 409, "STALE_LEASE"


def pool_not_found(name: str) -> NotFound:
    """The 404 of an unknown pool (`details.pool` names it)."""
    return NotFound("Pool not found", details={"pool": name}, reason="pool_not_found")


def get_pool(conn: Connection, name: str):
    """The pool row named `name`. Raises NotFound."""
    row = conn.execute(select(pools).where(pools.c.name == name)).one_or_none()
    if row is None:
        raise pool_not_found(name)
    return row


@dataclass(frozen=True)
class Lease:
    """What `activate` granted (or returned again); times are aware UTC datetimes."""

    token_id: uuid.UUID
    user_id: uuid.UUID
    activated_at: datetime
    expires_at: datetime
    outcome: str  # existing | available | expired | evicted
    lease_id: uuid.UUID  # the holder's secret: show it only to its holder (and admins)
    fencing_token: int  # public: grows with every grant in the pool
    pool: str = DEFAULT_POOL


@dataclass(frozen=True)
class SweepResult:
    """One sweep: whether it ran, how many expired leases it closed, and its decision time (UTC)."""

    ran: bool  # False when another runner swept moments ago
    at: datetime
    expired_by_pool: dict[str, int] = field(default_factory=dict)  # pool name -> leases closed

    @property
    def expired(self) -> int:
        """Expired leases closed, in every pool."""
        return sum(self.expired_by_pool.values())


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


def start_lease(
    conn: Connection, token_id, user_id, now: datetime, expires_at: datetime, lease_id, fencing_token: int
) -> None:
    """Lease the (locked, free) token to `user_id` from `now`, with its open usage row."""
    conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id)
        .values(
            current_user_id=user_id,
            lease_id=lease_id,
            fencing_token=fencing_token,
            activated_at=now,
            expires_at=expires_at,
        )
    )
    conn.execute(
        insert(usages).values(
            token_id=token_id, user_id=user_id, started_at=now, lease_id=lease_id, fencing_token=fencing_token
        )
    )


# --- activation ---------------------------------------------------------------


def activate(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    pool: str = DEFAULT_POOL,
    lifetime: int | None = None,
    now: datetime | None = None,
) -> Lease:
    """Lease a token of `pool` to `user_id`: theirs if they hold one, else a free one, else
    what the full pool's policy says (evict the lease ending first, or refuse).

    `lifetime` None means the pool's own. A new lease gets a new `lease_id` and
    the pool's next fencing token; the user's running lease keeps its own
    (outcome `existing`). On PostgreSQL this is one statement (safe to run in
    autocommit). Raises NotFound (no such pool), PoolExhausted (full, policy
    reject), PoolFull (full, or tickets waiting: policy queue), PoolEmpty (the
    pool has no token at all).
    """
    if is_postgres(conn):
        row = conn.exec_driver_sql(
            ACTIVATE_SQL, {"pool": pool, "user_id": user_id, "now": now, "lifetime": lifetime}
        ).one()  # the function answers one row, a grant or why not
        outcome = row.outcome
        if row.token_id is None:
            _refuse(pool, outcome, row.activated_at, row.expires_at)
        return Lease(
            row.token_id,
            user_id,
            as_utc(row.activated_at),
            as_utc(row.expires_at),
            outcome,
            row.lease_id,
            row.fencing_token,
            pool,
        )
    return _activate_portable(conn, user_id, pool=pool, lifetime=lifetime, now=now)


def _refuse(pool: str, outcome: str, now, earliest_end) -> None:
    """Raise the error of an activation that granted nothing."""
    if outcome == "no_pool":
        raise pool_not_found(pool)
    if outcome == "empty":
        raise PoolEmpty("The token pool is empty. Run `flask tokens seed`.", reason="pool_empty")
    if outcome == "full":
        raise PoolFull(pool)
    wait = (as_utc(earliest_end) - as_utc(now)).total_seconds()
    raise PoolExhausted(pool, max(1, math.ceil(wait)))


def _next_fencing_token(conn: Connection, pool_id: int) -> int:
    """Take the pool's next fencing token; the pool row stays locked until the commit."""
    return conn.execute(
        update(pools)
        .where(pools.c.id == pool_id)
        .values(fencing_token=pools.c.fencing_token + 1)
        .returning(pools.c.fencing_token)
    ).scalar_one()


def _activate_portable(conn: Connection, user_id, *, pool: str, lifetime: int | None, now) -> Lease:
    """The steps of the PostgreSQL function `tokenpool_activate`, in Core statements."""
    spec = get_pool(conn, pool)
    lifetime = lifetime or spec.lifetime_seconds
    in_pool = tokens.c.pool_id == spec.id
    own = conn.execute(
        select(
            tokens.c.id, tokens.c.activated_at, tokens.c.expires_at, tokens.c.lease_id, tokens.c.fencing_token
        )
        .where(in_pool, tokens.c.current_user_id == user_id)
        .with_for_update()
    ).one_or_none()
    decided_at = resolve_now(conn, now)
    if own is not None:
        if as_utc(own.expires_at) > decided_at:
            activated_at, expires_at = as_utc(own.activated_at), as_utc(own.expires_at)
            return Lease(
                own.id, user_id, activated_at, expires_at, "existing", own.lease_id, own.fencing_token, pool
            )
        _end_lease(conn, own.id, as_utc(own.expires_at), "expired")
    if spec.policy == "queue" and queue.waiting_in(conn, spec.id, decided_at):
        _refuse(pool, "full", decided_at, None)  # newcomers join the queue: first in, first out

    # a free token first (its state in the WHERE: checked again on a row locked after a
    # concurrent change), then the lease ending first; migration 0010 explains the race
    first = (
        select(tokens.c.id, tokens.c.current_user_id, tokens.c.expires_at)
        .where(in_pool, tokens.c.retired_at.is_(None))
        .order_by(tokens.c.expires_at, tokens.c.id)
        .limit(1)
    )
    free = first.where(tokens.c.expires_at <= _at(decided_at))
    candidate = conn.execute(free.with_for_update(skip_locked=True)).one_or_none()
    if candidate is None:
        candidate = conn.execute(first.with_for_update(skip_locked=True)).one_or_none()
    if candidate is None:
        candidate = conn.execute(first.with_for_update()).one_or_none()
    if candidate is None:
        raise PoolEmpty("The token pool is empty. Run `flask tokens seed`.", reason="pool_empty")
    decided_at = resolve_now(conn, now)
    full = candidate.current_user_id is not None and as_utc(candidate.expires_at) > decided_at
    if full and spec.policy != "evict":  # the one place where a full pool's policy decides
        _refuse(pool, "rejected" if spec.policy == "reject" else "full", decided_at, candidate.expires_at)

    fencing_token = _next_fencing_token(conn, spec.id)
    now = resolve_now(conn, now)
    outcome = "available"
    if candidate.current_user_id is not None:
        held_until = as_utc(candidate.expires_at)
        outcome = "expired" if held_until <= now else "evicted"
        _end_lease(conn, candidate.id, min(held_until, now), outcome)

    expires_at = now + timedelta(seconds=lifetime)
    lease_id = new_lease_id()
    start_lease(conn, candidate.id, user_id, now, expires_at, lease_id, fencing_token)
    return Lease(candidate.id, user_id, now, expires_at, outcome, lease_id, fencing_token, pool)


# --- release, renew, clear ---------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Who asks to end or extend a lease: the holder's `user_id` and the lease's secret `lease_id`."""

    user_id: uuid.UUID
    lease_id: uuid.UUID


def _lock_held_token(
    conn: Connection, pool_id: int, token_id, holder: Holder | None, fencing_token: int | None, now
):
    """Lock the pool's token; check it is active and, unless `holder` is None (an admin), that
    `holder` presents its current lease: the holding `user_id` and that lease's `lease_id`.
    A `fencing_token`, when given, must be the current lease's.

    Returns (row, decision time). Raises NotFound, StaleLease, Conflict.
    """
    row = conn.execute(
        select(tokens).where(tokens.c.id == token_id, tokens.c.pool_id == pool_id).with_for_update()
    ).one_or_none()
    now = resolve_now(conn, now)
    if row is None:
        raise NotFound("Token not found", details={"token_id": str(token_id)}, reason="token_not_found")
    active = row.current_user_id is not None and as_utc(row.expires_at) > now
    if fencing_token is not None and (not active or row.fencing_token != fencing_token):
        raise StaleLease(
            "fencing_token is not the token's current lease",
            details={"token_id": str(token_id), "fencing_token": fencing_token},
            reason="stale_lease",
        )
    if not active:
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
    conn: Connection,
    token_id,
    *,
    pool: str = DEFAULT_POOL,
    holder: Holder | None = None,
    fencing_token: int | None = None,
    now: datetime | None = None,
) -> tuple[dict, uuid.UUID]:
    """End an active lease of `pool`: by its holder (`holder`), or by an admin (None).

    Returns the token (as released) and the user whose lease ended. Raises NotFound,
    StaleLease, Conflict.
    In a `queue` pool the token goes to the oldest waiting ticket in the same transaction.
    """
    spec = get_pool(conn, pool)
    row, at = _lock_held_token(conn, spec.id, token_id, holder, fencing_token, now)
    _end_lease(conn, token_id, at, "released")
    released = get_token(conn, token_id, pool_id=spec.id, now=at)
    queue.hand_over(conn, spec.id, now=now, spec=spec)
    return released, row.current_user_id


def renew(
    conn: Connection,
    token_id,
    *,
    pool: str = DEFAULT_POOL,
    holder: Holder,
    lifetime: int | None = None,
    fencing_token: int | None = None,
    now: datetime | None = None,
) -> dict:
    """Extend the holder's lease to min(now + lifetime, started_at + the pool's
    max_lifetime_seconds); the lease keeps its `lease_id` and fencing token.
    `lifetime` None means the pool's own.

    Raises NotFound, StaleLease, Conflict.
    """
    spec = get_pool(conn, pool)
    row, now = _lock_held_token(conn, spec.id, token_id, holder, fencing_token, now)
    expires_at = now + timedelta(seconds=lifetime or spec.lifetime_seconds)
    if spec.max_lifetime_seconds is not None:
        expires_at = min(expires_at, as_utc(row.activated_at) + timedelta(seconds=spec.max_lifetime_seconds))
    conn.execute(update(tokens).where(tokens.c.id == token_id).values(expires_at=max(expires_at, now)))
    record_event(
        conn,
        "renewed",
        at=now,
        pool=pool,
        token_id=token_id,
        user_id=holder.user_id,
        fencing_token=row.fencing_token,
    )
    return get_token(conn, token_id, pool_id=spec.id, now=now)


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


def clear_active(conn: Connection, *, pool: str = DEFAULT_POOL, now: datetime | None = None) -> int:
    """End every active lease of `pool` (reason `cleared`); expired ones close as `expired`.

    Returns how many active leases were cleared. Raises NotFound.
    """
    return clear_pool(conn, get_pool(conn, pool).id, now=now)


def clear_pool(conn: Connection, pool_id: int, *, now: datetime | None = None) -> int:
    """`clear_active` for a pool known by id (also the forced delete of a pool)."""
    held = conn.execute(
        select(tokens.c.id, tokens.c.expires_at)
        .where(tokens.c.pool_id == pool_id, tokens.c.current_user_id.is_not(None))
        .with_for_update()
    ).all()
    clock, now = now, resolve_now(conn, now)
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
    queue.hand_over(conn, pool_id, now=clock)
    return len(active)


# --- sweeper -------------------------------------------------------------------


def sweep(conn: Connection, *, now: datetime | None = None, min_gap_seconds: float = 0) -> SweepResult:
    """Close the usages of every expired lease, with `ended_at = expires_at`.

    Safe with any number of concurrent runners: the `sweeper_state` row is the
    lock, and a runner that finds a sweep younger than `min_gap_seconds`
    skips. Records the run's time for the health check.
    """
    clock, now = now, resolve_now(conn, now)
    last_run_at = sweeper_state.c.last_run_at
    claimed = conn.execute(
        update(sweeper_state)
        .where(sweeper_state.c.id == 1)
        .where(last_run_at.is_(None) | (last_run_at <= _at(now - timedelta(seconds=min_gap_seconds))))
        .values(last_run_at=now)
    ).rowcount
    if not claimed:
        return SweepResult(ran=False, at=now)
    by_pool_id: Counter[int] = Counter()
    while True:
        batch = conn.execute(
            select(tokens.c.id, tokens.c.pool_id)
            .where(tokens.c.current_user_id.is_not(None), tokens.c.expires_at <= _at(now))
            .order_by(tokens.c.expires_at)
            .limit(SWEEP_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        _close_expired(conn, [row.id for row in batch])
        by_pool_id.update(row.pool_id for row in batch)
        if len(batch) < SWEEP_BATCH:
            break
    queue.hand_over_due(conn, now=clock)  # freed tokens of queue pools go to their tickets
    conn.execute(
        update(sweeper_state).where(sweeper_state.c.id == 1).values(last_expired_count=by_pool_id.total())
    )
    names = conn.execute(select(pools.c.id, pools.c.name).where(pools.c.id.in_(by_pool_id))).all()
    by_pool = {name: by_pool_id[pool_id] for pool_id, name in names}
    return SweepResult(ran=True, at=now, expired_by_pool=by_pool)


def last_sweep_at(conn: Connection) -> datetime | None:
    """When the token manager last finished a sweep (any worker, any instance)."""
    return as_utc(conn.scalar(select(sweeper_state.c.last_run_at).where(sweeper_state.c.id == 1)))


# --- seeding -------------------------------------------------------------------


def seed(conn: Connection, size: int, *, pool_id: int = DEFAULT_POOL_ID, progress=None) -> int:
    """Top the pool up to `size` tokens that are not retired, raising its size to `size`
    when smaller; never deletes. Returns how many were added."""
    if is_postgres(conn):  # concurrent seeders queue instead of both topping up
        conn.execute(text("SELECT pg_advisory_xact_lock(7316001, :pool)"), {"pool": pool_id})
    have = conn.execute(
        select(func.count())
        .select_from(tokens)
        .where(tokens.c.pool_id == pool_id, tokens.c.retired_at.is_(None))
    ).scalar_one()
    conn.execute(update(pools).where(pools.c.id == pool_id, pools.c.size < size).values(size=size))
    missing = max(0, size - have)
    created_at = utcnow()
    added = 0
    while added < missing:
        n = min(SEED_BATCH, missing - added)
        if is_postgres(conn):
            conn.execute(
                text(
                    "INSERT INTO tokens (id, pool_id, expires_at, created_at) "
                    "SELECT gen_random_uuid(), :pool, :epoch, :created FROM generate_series(1, :n)"
                ),
                {"pool": pool_id, "epoch": EPOCH, "created": created_at, "n": n},
            )
        else:
            conn.execute(
                insert(tokens),
                [
                    {"id": uuid.uuid4(), "pool_id": pool_id, "expires_at": EPOCH, "created_at": created_at}
                    for _ in range(n)
                ],
            )
        added += n
        if progress:
            progress(added, missing)
    return added


from . import queue  # noqa: E402  (queue builds on this module's steps; used at call time only)
