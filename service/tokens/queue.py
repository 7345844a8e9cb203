"""The `queue` policy: tickets of a full pool, served first in, first out.

Every change of a pool's queue (a ticket queued, granted, cancelled or
expired) happens under that pool's queue lock (a transaction-scoped advisory
lock on PostgreSQL; SQLite runs one writer at a time), so the head of the
queue is never read stale and no ticket is granted twice. Locks are taken in
one order everywhere: token rows, then the queue lock, then the pool row (its
fencing counter). A drain under the queue lock takes token rows with SKIP
LOCKED only: a token locked by another transaction is that transaction's to
hand over once it holds the queue lock itself.

Who hands over: a release or a clear in the transaction that frees the token;
the queuing transaction when a token is free; the scheduler (`hand_over_due`,
run by the sweeper thread) when a lease expires.

Every public function takes an open Connection inside a transaction;
`now` as in service.py.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import has_app_context
from sqlalchemy import Connection, Engine, event, func, insert, literal, or_, select, text, update

from ..db import is_postgres
from ..errors import ApiError, Conflict, Forbidden, NotFound
from ..events.outbox import record_event
from ..models import Ticket
from ..telemetry import emit
from ..timeutil import as_utc, utcnow
from .service import (
    _at,
    _end_lease,
    get_pool,
    new_lease_id,
    pools,
    resolve_now,
    start_lease,
    tokens,
)

tickets = Ticket.__table__
QUEUE_LOCK = 7316002  # with the pool's id: pg_advisory_xact_lock(QUEUE_LOCK, pool_id)
WAITING = tickets.c.status == "waiting"
GRANTS_NOTED = "tokenpool.queue_grants"  # conn.info: this transaction's grants, reported at commit


class QueueFull(ApiError):
    """The pool's queue holds `max_queue` waiting tickets: retry after `retry_after` seconds."""

    code, error_code = 409, "QUEUE_FULL"

    def __init__(self, pool: str, retry_after: int, max_queue: int):
        super().__init__(
            f"The queue of pool '{pool}' is full. Retry after {retry_after} seconds.",
            details={"pool": pool, "retry_after": retry_after, "max_queue": max_queue},
            reason="queue_full",
        )
        self.response_headers = {"Retry-After": str(retry_after)}


@dataclass(frozen=True)
class Grant:
    """A ticket granted a lease: what metrics and events need."""

    pool: str
    ticket_id: uuid.UUID
    user_id: uuid.UUID
    token_id: uuid.UUID
    fencing_token: int
    queued_at: datetime
    activated_at: datetime
    freed_at: datetime  # when the token became free: the end of the lease before (expiry, release)
    after: str  # what handed it over: expiry (the token manager), release (a release, clear, growth), queued
    closed_expired: bool = False  # it closed the token's expired lease (nobody had yet): an expiry


def lock_queue(conn: Connection, pool_id: int) -> None:
    """Take the pool's queue lock until the commit (PostgreSQL; SQLite has one writer)."""
    if is_postgres(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:ns, :pool)"), {"ns": QUEUE_LOCK, "pool": pool_id})


def ticket_not_found(ticket_id) -> NotFound:
    """The 404 of an unknown ticket (or another pool's)."""
    return NotFound("Ticket not found", details={"ticket_id": str(ticket_id)}, reason="ticket_not_found")


def waiting_in(conn: Connection, pool_id: int, now: datetime) -> bool:
    """Whether a ticket of the pool waits (and its wait has not ended at `now`)."""
    return (
        conn.scalar(
            select(tickets.c.id)
            .where(tickets.c.pool_id == pool_id, WAITING, tickets.c.expires_at > _at(now))
            .limit(1)
        )
        is not None
    )


def _expire(conn: Connection, pool_id: int, now: datetime) -> int:
    """Waiting tickets of the pool past their `expires_at` become expired (at that time)."""
    return conn.execute(
        update(tickets)
        .where(tickets.c.pool_id == pool_id, WAITING, tickets.c.expires_at <= _at(now))
        .values(status="expired", settled_at=tickets.c.expires_at)
    ).rowcount


def drain(conn: Connection, spec, clock: datetime | None, after: str) -> list[Grant]:
    """Grant free tokens (and tokens whose lease has expired) of the pool to its oldest
    waiting tickets, one by one, while both remain. The caller holds the queue lock.

    `clock` is the caller's `now` argument (None: the database's clock, read again
    for each grant after its fencing token, as activation does). `after` says who hands over.
    The grants are also noted on the connection: telemetry reports them once it commits.
    """
    now = resolve_now(conn, clock)
    _expire(conn, spec.id, now)
    grants: list[Grant] = []
    while True:
        head = conn.execute(
            select(tickets).where(tickets.c.pool_id == spec.id, WAITING).order_by(tickets.c.id).limit(1)
        ).one_or_none()
        if head is None:
            break
        token = conn.execute(
            select(tokens.c.id, tokens.c.current_user_id, tokens.c.expires_at, tokens.c.released_at)
            .where(
                tokens.c.pool_id == spec.id,
                tokens.c.retired_at.is_(None),
                or_(tokens.c.current_user_id.is_(None), tokens.c.expires_at <= _at(now)),
            )
            .order_by(tokens.c.expires_at, tokens.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if token is None:
            break
        grants.append(_grant(conn, spec, head, token, clock, after))
    if grants:
        conn.info.setdefault(GRANTS_NOTED, []).extend(grants)
    return grants


def _grant(conn: Connection, spec, ticket, token, clock: datetime | None, after: str) -> Grant:
    """Lease the locked `token` to the ticket's user; the lease starts now."""
    freed_at = as_utc(token.released_at) if token.released_at is not None else None
    closed_expired = token.current_user_id is not None
    if closed_expired:  # an expired lease nobody closed yet
        freed_at = as_utc(token.expires_at)
        _end_lease(conn, token.id, freed_at, "expired")
    # the pool's counter first, the clock after it (in the same statement): fencing tokens
    # grow with start times
    fencing_token, read_at = conn.execute(
        update(pools)
        .where(pools.c.id == spec.id)
        .values(fencing_token=pools.c.fencing_token + 1)
        .returning(pools.c.fencing_token, func.clock_timestamp() if is_postgres(conn) else literal(None))
    ).one()
    now = as_utc(clock) if clock is not None else as_utc(read_at) if read_at is not None else utcnow()
    lease_id = new_lease_id()
    expires_at = now + timedelta(seconds=spec.lifetime_seconds)
    start_lease(conn, token.id, ticket.user_id, now, expires_at, lease_id, fencing_token)
    conn.execute(
        update(tickets)
        .where(tickets.c.id == ticket.id)
        .values(
            status="granted",
            settled_at=now,
            token_id=token.id,
            lease_id=lease_id,
            fencing_token=fencing_token,
            activated_at=now,
            lease_expires_at=expires_at,
        )
    )
    # after the lease's own `leased` event (the usage row's trigger): the ticket was served by it
    record_event(
        conn,
        "granted",
        at=now,
        pool=spec.name,
        token_id=token.id,
        user_id=ticket.user_id,
        fencing_token=fencing_token,
    )
    return Grant(
        spec.name,
        ticket.ticket_id,
        ticket.user_id,
        token.id,
        fencing_token,
        as_utc(ticket.queued_at),
        now,
        freed_at or now,  # never leased: free since it was made
        after,
        closed_expired,
    )


def hand_over(conn: Connection, pool_id: int, *, now: datetime | None = None, spec=None) -> list[Grant]:
    """After a token of the pool was freed in this transaction: if it is a `queue` pool, give
    what is free to the oldest waiting tickets (`spec`: the pool's row, when the caller has
    it). Returns the grants."""
    if spec is None:
        spec = conn.execute(select(pools).where(pools.c.id == pool_id)).one()
    if spec.policy != "queue":
        return []
    lock_queue(conn, pool_id)
    return drain(conn, spec, now, "release")


def _retry_after(conn: Connection, pool_id: int, now: datetime) -> int:
    """Seconds (at least 1) until a place in the queue may free: the earliest end of a lease
    of the pool (its token goes to the head) or of a waiting ticket's wait."""
    lease_end = conn.scalar(
        select(func.min(tokens.c.expires_at)).where(
            tokens.c.pool_id == pool_id, tokens.c.current_user_id.is_not(None)
        )
    )
    wait_end = conn.scalar(
        select(func.min(tickets.c.expires_at)).where(tickets.c.pool_id == pool_id, WAITING)
    )
    ends = [as_utc(t) for t in (lease_end, wait_end) if t is not None]
    if not ends:
        return 1
    return max(1, math.ceil((min(ends) - now).total_seconds()))


def enqueue(conn: Connection, user_id: uuid.UUID, *, pool: str, now: datetime | None = None):
    """The user's waiting ticket in the full `queue` pool: their own if they have one, else a new
    one at the tail. Tokens free meanwhile are handed to the queue at once, so the answer may be
    a granted ticket. Returns (ticket object, whether this call queued it).

    Raises NotFound, QueueFull (`max_queue` tickets wait).
    """
    spec = get_pool(conn, pool)
    lock_queue(conn, spec.id)
    clock, now = now, resolve_now(conn, now)
    _expire(conn, spec.id, now)
    mine = conn.scalar(
        select(tickets.c.ticket_id).where(tickets.c.pool_id == spec.id, tickets.c.user_id == user_id, WAITING)
    )
    created = mine is None
    if created:
        waiting = conn.scalar(
            select(func.count()).select_from(tickets).where(tickets.c.pool_id == spec.id, WAITING)
        )
        if waiting >= spec.max_queue:
            raise QueueFull(pool, _retry_after(conn, spec.id, now), spec.max_queue)
        mine = uuid.uuid4()
        conn.execute(
            insert(tickets).values(
                ticket_id=mine,
                pool_id=spec.id,
                user_id=user_id,
                status="waiting",
                queued_at=now,
                expires_at=now + timedelta(seconds=spec.max_wait_seconds),
            )
        )
        record_event(conn, "queued", at=now, pool=pool, user_id=user_id)
    drain(conn, spec, clock, "queued")
    return get_ticket(conn, mine, pool=pool, now=now, lease_id=True), created


def _position(conn: Connection, row) -> int:
    return conn.execute(
        select(func.count())
        .select_from(tickets)
        .where(tickets.c.pool_id == row.pool_id, WAITING, tickets.c.id <= row.id)
    ).scalar_one()


def ticket_view(conn: Connection, row, pool: str, now: datetime, *, lease_id: bool) -> dict:
    """The API's ticket object; `lease_id` only when the asker may see it (the ticket's user, admins)."""
    status = row.status
    if status == "waiting" and as_utc(row.expires_at) <= now:
        status = "expired"  # the scheduler records it soon; the answer is true now
    view = {
        "ticket_id": row.ticket_id,
        "pool": pool,
        "user_id": row.user_id,
        "status": status,
        "queued_at": as_utc(row.queued_at),
        "expires_at": as_utc(row.expires_at),
    }
    if status == "waiting":
        view["position"] = _position(conn, row)
    elif status == "granted":
        view |= {
            "token_id": row.token_id,
            "fencing_token": row.fencing_token,
            "activated_at": as_utc(row.activated_at),
            "expires_at": as_utc(row.lease_expires_at),  # a granted ticket's: its lease's end
        }
        if lease_id:
            view["lease_id"] = row.lease_id
    return view


def _ticket_row(conn: Connection, ticket_id, pool_id: int):
    row = conn.execute(
        select(tickets).where(tickets.c.ticket_id == ticket_id, tickets.c.pool_id == pool_id)
    ).one_or_none()
    if row is None:
        raise ticket_not_found(ticket_id)
    return row


def get_ticket(
    conn: Connection,
    ticket_id,
    *,
    pool: str,
    now: datetime | None = None,
    lease_id: bool = False,
    user_id: uuid.UUID | None = None,
) -> dict:
    """One ticket of the pool. `lease_id` True (an admin) or `user_id` the ticket's user
    shows a granted ticket's `lease_id`. Raises NotFound."""
    spec = get_pool(conn, pool)
    row = _ticket_row(conn, ticket_id, spec.id)
    shown = lease_id or (user_id is not None and user_id == row.user_id)
    return ticket_view(conn, row, pool, resolve_now(conn, now), lease_id=shown)


def cancel(
    conn: Connection, ticket_id, *, pool: str, user_id: uuid.UUID | None, now: datetime | None = None
) -> dict:
    """Cancel a waiting ticket: by its user (`user_id`), or by an admin (None). Returns the ticket.

    Raises NotFound, Forbidden (another user's ticket), Conflict (not waiting).
    """
    spec = get_pool(conn, pool)
    lock_queue(conn, spec.id)
    now = resolve_now(conn, now)
    _expire(conn, spec.id, now)
    row = _ticket_row(conn, ticket_id, spec.id)
    if user_id is not None and user_id != row.user_id:
        raise Forbidden(
            "The ticket is another user's", details={"ticket_id": str(ticket_id)}, reason="not_ticket_holder"
        )
    if row.status != "waiting":
        raise Conflict(
            f"The ticket is {row.status}, not waiting",
            details={"ticket_id": str(ticket_id), "status": row.status},
            reason="ticket_not_waiting",
        )
    conn.execute(update(tickets).where(tickets.c.id == row.id).values(status="cancelled", settled_at=now))
    record_event(conn, "cancelled", at=now, pool=pool, user_id=row.user_id)
    return ticket_view(conn, _ticket_row(conn, ticket_id, spec.id), pool, now, lease_id=False)


def cancel_waiting(conn: Connection, pool, now: datetime) -> int:
    """Cancel every waiting ticket of `pool` (its row: its policy is no longer `queue`, or it is
    deleted), each with its `cancelled` event. Returns how many."""
    lock_queue(conn, pool.id)
    users = (
        conn.execute(
            update(tickets)
            .where(tickets.c.pool_id == pool.id, WAITING)
            .values(status="cancelled", settled_at=now)
            .returning(tickets.c.user_id)
        )
        .scalars()
        .all()
    )
    for user_id in users:
        record_event(conn, "cancelled", at=now, pool=pool.name, user_id=user_id)
    return len(users)


def queue_lengths(conn: Connection, now: datetime | None) -> dict[str, int]:
    """Every `queue` pool's waiting tickets by pool name (0 included): the metrics' gauge."""
    spec = conn.execute(select(pools.c.id, pools.c.name).where(pools.c.policy == "queue")).all()
    counts = queued_counts(conn, [r.id for r in spec], now) if spec else {}
    return {r.name: counts.get(r.id, 0) for r in spec}


def queued_counts(conn: Connection, pool_ids: list[int], now: datetime | None) -> dict[int, int]:
    """Waiting tickets (not past their wait) per pool."""
    if now is None and not is_postgres(conn):
        now = utcnow()
    query = select(tickets.c.pool_id, func.count()).where(tickets.c.pool_id.in_(pool_ids), WAITING)
    if now is not None:
        query = query.where(tickets.c.expires_at > _at(now))
    else:
        query = query.where(tickets.c.expires_at > func.now())
    return {pool_id: n for pool_id, n in conn.execute(query.group_by(tickets.c.pool_id)).all()}


# --- the scheduler ------------------------------------------------------------------


def _queues_waiting(conn: Connection):
    return select(tickets.c.pool_id).where(WAITING).distinct()


def hand_over_due(conn: Connection, *, now: datetime | None = None) -> tuple[list[Grant], dict[str, int]]:
    """Hand the expired leases of every `queue` pool with waiting tickets to those tickets, and
    record the tickets whose wait ended as expired. Returns (grants, tickets expired by pool)."""
    clock, now = now, resolve_now(conn, now)
    due = conn.execute(
        select(pools)
        .where(pools.c.policy == "queue", pools.c.id.in_(_queues_waiting(conn)))
        .order_by(pools.c.id)
    ).all()
    grants: list[Grant] = []
    expired = {}
    for spec in due:
        lock_queue(conn, spec.id)
        if n := _expire(conn, spec.id, now):
            expired[spec.name] = n
        grants += drain(conn, spec, clock, "expiry")
    return grants, expired


def next_due(conn: Connection) -> datetime | None:
    """When the scheduler must next run: the earliest end of a lease, or of a ticket's wait,
    in the pools with waiting tickets (None: nothing waits)."""
    waiting = _queues_waiting(conn)
    lease_end = conn.scalar(
        select(func.min(tokens.c.expires_at)).where(
            tokens.c.pool_id.in_(waiting),
            tokens.c.retired_at.is_(None),
            tokens.c.current_user_id.is_not(None),
        )
    )
    wait_end = conn.scalar(select(func.min(tickets.c.expires_at)).where(WAITING))
    ends = [as_utc(t) for t in (lease_end, wait_end) if t is not None]
    return min(ends) if ends else None


def run_due(
    conn: Connection, *, now: datetime | None = None
) -> tuple[list[Grant], dict[str, int], float | None]:
    """`hand_over_due`, then how many seconds until the scheduler must run again (None:
    no ticket waits). Returns (grants, tickets expired by pool, seconds).

    With no ticket waiting it reads the tickets' index alone: an idle scheduler looks every
    second and must not queue behind a lock on `tokens` or `pools` (a migration, a shrink).
    """
    if conn.scalar(select(tickets.c.id).where(WAITING).limit(1)) is None:
        return [], {}, None
    grants, expired = hand_over_due(conn, now=now)
    now = resolve_now(conn, now)
    due = next_due(conn)
    return grants, expired, None if due is None else max(0.0, (due - now).total_seconds())


# --- telemetry of grants, once their transaction commits ----------------------------


@event.listens_for(Engine, "commit")
def _report_grants(conn) -> None:
    grants = conn.info.pop(GRANTS_NOTED, None)
    if not grants or not has_app_context():
        return
    for g in grants:
        if g.closed_expired:  # the lease before it ended here, not in a sweep: its expiry counts once
            emit("expiration", "success", reason="expired", pool=g.pool, token_id=str(g.token_id))
        emit(
            "ticket",
            "success",
            reason="granted",
            pool=g.pool,
            token_id=str(g.token_id),
            user_id=str(g.user_id),
            after=g.after,
            waited_seconds=(g.activated_at - g.queued_at).total_seconds(),
            hand_over_seconds=max(0.0, (g.activated_at - g.freed_at).total_seconds()),
        )


@event.listens_for(Engine, "rollback")
def _forget_grants(conn) -> None:
    if conn.invalidated:
        # reading `info` would try to reconnect inside the failed transaction and raise
        # PendingRollbackError over the real error (a database past its deadline became a
        # 500); the pool clears an invalidated connection's info when it reconnects
        return
    conn.info.pop(GRANTS_NOTED, None)
