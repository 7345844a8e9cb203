"""The events outbox: write an event in the changing transaction, publish ids, read pages.

Writers add rows without an id (`record_event`, or the triggers on
`token_usages` for lease starts and ends). `publish` then numbers the rows
written so far: one publisher at a time (a transaction-level advisory lock on
PostgreSQL; SQLite's writers are serialised anyway), each publisher starting
above the highest id already given. So `event_id` grows in the order events
became visible: a reader that has seen id N never finds a smaller id later,
even when the transaction that wrote it committed after others (a sequence
value taken inside the writing transaction would not promise that). Writers
take no lock for it: activations never wait on each other for their events.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, select, text

from ..db import is_postgres, run_transaction
from ..models import EVENT_TYPES, Event

events = Event.__table__

PUBLISH_LOCK = 7316018  # pg_advisory_xact_lock key: one publisher at a time
EVENTS_NOTED = "tokenpool.events_written"  # conn.info: this transaction wrote events
CHANNEL = "tokenpool_events"  # notified when events got their ids (no payload: read the outbox)
PUBLISH_BATCH = 5000
DEFAULT_POOL = "default"

_PUBLISH = text(
    "UPDATE events SET event_id = numbered.base + numbered.n FROM ("
    " SELECT e.seq, row_number() OVER (ORDER BY e.seq) AS n,"
    "  (SELECT coalesce(max(event_id), 0) FROM events) AS base"
    " FROM events e WHERE e.event_id IS NULL ORDER BY e.seq LIMIT :batch"
    ") AS numbered WHERE events.seq = numbered.seq"
)
_LOCK = text(f"SELECT pg_advisory_xact_lock({PUBLISH_LOCK})")
_NOTIFY = text(f"NOTIFY {CHANNEL}")
_READ = (
    select(
        events.c.event_id,
        events.c.type,
        events.c.pool,
        events.c.token_id,
        events.c.user_id,
        events.c.fencing_token,
        events.c.at,
    )
    .where(events.c.event_id > bindparam("after"))
    .order_by(events.c.event_id)
    .limit(bindparam("limit"))
)
_READ_POOL = _READ.where(events.c.pool == bindparam("pool"))


def record_event(
    conn: Connection,
    type: str,
    *,
    at: datetime,
    pool: str = DEFAULT_POOL,
    token_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    fencing_token: int | None = None,
) -> None:
    """Add an event to the outbox inside `conn`'s transaction (it commits or rolls back with it).

    The one way code writes an event (lease starts and ends are written by the
    database's triggers, and the token events emitted for them wake the publisher);
    the commit wakes this process's publisher (service/events/publisher.py). Raises
    ValueError for an unknown `type`.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    conn.info[EVENTS_NOTED] = True  # the publisher is woken when the transaction commits
    conn.execute(
        insert(events).values(
            type=type, pool=pool, token_id=token_id, user_id=user_id, fencing_token=fencing_token, at=at
        )
    )


def publish(conn: Connection, *, batch: int = PUBLISH_BATCH) -> int:
    """Give the next ids to up to `batch` events written so far; returns how many got one.

    On PostgreSQL it first waits for another publisher's lock (within the
    statement timeout; publishing transactions last milliseconds): that one's
    snapshot may predate events committed since, so whoever asks numbers them
    itself, and a reader that saw a lease change answered finds its event. A
    transaction that numbered events also sends `NOTIFY tokenpool_events`
    (delivered at its commit, never for a rollback): the event feeds of every
    instance read the outbox when they hear it.
    """
    if not is_postgres(conn):
        return conn.execute(_PUBLISH, {"batch": batch}).rowcount
    conn.execute(_LOCK)
    numbered = conn.execute(_PUBLISH, {"batch": batch}).rowcount
    if numbered:
        conn.execute(_NOTIFY)
    return numbered


def read_events(conn: Connection, *, after: int, limit: int, pool: str | None = None) -> list[dict]:
    """Published events with `event_id > after`, oldest first, at most `limit`."""
    params: dict[str, int | str] = {"after": after, "limit": limit}
    statement = _READ if pool is None else _READ_POOL
    if pool is not None:
        params["pool"] = pool
    result = conn.execute(statement, params)
    keys = tuple(result.keys())  # once: `Row._asdict` builds the key view again for every row
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


def publish_and_read(conn: Connection, *, after: int, limit: int, pool: str | None = None) -> list[dict]:
    """`publish`, then `read_events`, in one transaction (a stream's or a page's one round)."""
    publish(conn)
    return read_events(conn, after=after, limit=limit, pool=pool)


def page(conn: Connection, *, after: int, limit: int, pool: str | None = None) -> tuple[list[dict], int]:
    """`publish_and_read`, and where the next page starts: the last event's id, else `after`,
    but never past the newest event (an id the service has not given yet would skip the
    events up to it). Returns (events, next `after`)."""
    found = publish_and_read(conn, after=after, limit=limit, pool=pool)
    if found:
        return found, found[-1]["event_id"]
    return found, min(after, newest(conn))


def newest(conn: Connection) -> int:
    """The highest event id given so far (0 when none); numbers none (read-only)."""
    return conn.scalar(select(func.coalesce(func.max(events.c.event_id), 0))) or 0


def publish_pending(*, budget_seconds: float | None = None) -> int:
    """Number every event written before the call, one batch of `PUBLISH_BATCH` per transaction
    (app context; `budget_seconds` each, as `run_transaction`); returns how many got an id."""
    batch, total = PUBLISH_BATCH, 0
    while (numbered := run_transaction(publish, batch=batch, budget_seconds=budget_seconds)) == batch:
        total += numbered
    return total + numbered


def latest() -> int:
    """`publish_pending`, then the highest event id (0 when none): where "from now on" starts,
    so that no event written before it reads as news (app context)."""
    publish_pending()
    return run_transaction(newest)
