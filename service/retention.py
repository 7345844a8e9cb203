"""Retention: ended usages and settled tickets older than USAGE_RETENTION_DAYS and events
older than EVENT_RETENTION_HOURS are deleted, a small batch per transaction.

Only ended usages go (an open lease's usage has no `ended_at`), only settled
tickets (granted, cancelled or expired: a waiting one has no `settled_at`), and
only published events, never the newest (`publish` numbers new events above it).
Each batch is its own short transaction deleting rows nobody else writes, so
activations never wait on a prune: they lock tokens and open usages, never an
ended usage or an event. The sweeper prunes after each sweep it ran (one runner
per interval for the whole cluster); `flask tokens prune` does the same on
demand, or only counts with `--dry-run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Executable, func, select, text

from .clock import now as clock_now
from .db import run_transaction
from .models import Event, Ticket, TokenUsage
from .telemetry import emit

PRUNE_BATCH = 2000  # rows per transaction: milliseconds of work
usages = TokenUsage.__table__
events = Event.__table__
tickets = Ticket.__table__

# A prune walks each table in key order (usages and tickets by id, events by seq: the order
# rows were written), a window of `batch` rows per transaction, and deletes the old rows of it.
# The walk goes on from where the last window ended (never over the rows it deleted, which
# stay in the index until vacuum: starting again from the low end would make each window
# slower than the one before), and stops at the first row written after the cutoff: nothing
# later can be older (a usage ends after it starts, a ticket is settled after it is queued;
# an event happens before it is written).
_WINDOW = {
    "usages": text(
        "SELECT max(id), count(*), max(CASE WHEN started_at >= :before THEN 1 ELSE 0 END) FROM"
        " (SELECT id, started_at FROM token_usages WHERE id > :start ORDER BY id LIMIT :batch) w"
    ),
    "tickets": text(
        "SELECT max(id), count(*), max(CASE WHEN queued_at >= :before THEN 1 ELSE 0 END) FROM"
        " (SELECT id, queued_at FROM tickets WHERE id > :start ORDER BY id LIMIT :batch) w"
    ),
    "events": text(
        "SELECT max(seq), count(*), max(CASE WHEN at >= :before THEN 1 ELSE 0 END) FROM"
        " (SELECT seq, at FROM events WHERE seq > :start ORDER BY seq LIMIT :batch) w"
    ),
}
_DELETE = {
    "usages": text("DELETE FROM token_usages WHERE id > :start AND id <= :end AND ended_at < :before"),
    "tickets": text("DELETE FROM tickets WHERE id > :start AND id <= :end AND settled_at < :before"),
    # published events only, never the newest: ids never go back
    "events": text(
        "DELETE FROM events WHERE seq > :start AND seq <= :end AND at < :before"
        " AND event_id < (SELECT max(event_id) FROM events)"
    ),
}
_COUNT: dict[str, Executable] = {
    "usages": select(func.count()).select_from(usages).where(usages.c.ended_at < text(":before")),
    "tickets": select(func.count()).select_from(tickets).where(tickets.c.settled_at < text(":before")),
    "events": text(
        "SELECT count(*) FROM events WHERE at < :before AND event_id < (SELECT max(event_id) FROM events)"
    ),
}


@dataclass(frozen=True)
class Cutoffs:
    """Rows older than these go; None keeps that table whole."""

    usages: datetime | None
    tickets: datetime | None
    events: datetime | None

    def tables(self) -> list[tuple[str, datetime | None]]:
        """(table, cutoff) in the order a prune takes them."""
        return [("usages", self.usages), ("tickets", self.tickets), ("events", self.events)]


def cutoffs(config: dict, now: datetime) -> Cutoffs:
    """The cutoffs of the settings at `now` (USAGE_RETENTION_DAYS 0 keeps every usage and ticket)."""
    days = config["USAGE_RETENTION_DAYS"]
    leases = now - timedelta(days=days) if days else None
    return Cutoffs(
        usages=leases, tickets=leases, events=now - timedelta(hours=config["EVENT_RETENTION_HOURS"])
    )


@dataclass(frozen=True)
class Batch:
    """What one batch of a prune did."""

    deleted: int
    end: int  # the last key of the window: the next batch starts after it
    last: bool  # the walk reached rows written after the cutoff, or the end of the table


def prune_batch(
    conn: Connection, table: str, before: datetime, *, start: int = 0, batch: int = PRUNE_BATCH
) -> Batch:
    """Delete the rows of `table` ("usages", "tickets" or "events") older than `before` among the next
    `batch` rows after key `start`."""
    end, seen, past_cutoff = conn.execute(
        _WINDOW[table], {"start": start, "batch": batch, "before": before}
    ).one()
    if not seen:
        return Batch(0, start, True)
    deleted = conn.execute(_DELETE[table], {"start": start, "end": end, "before": before}).rowcount
    return Batch(deleted, end, bool(past_cutoff) or seen < batch)


def prunable(conn: Connection, table: str, before: datetime) -> int:
    """How many rows of `table` a prune would delete now (for `--dry-run`)."""
    return conn.scalar(_COUNT[table], {"before": before}) or 0


def prune(
    cut: Cutoffs, *, max_batches: int | None = None, batch: int = PRUNE_BATCH, on_batch=None
) -> dict[str, int]:
    """Prune each table, a batch per transaction, until done or `max_batches` each (app context).

    Returns rows deleted per table; `on_batch(table, count)` is called after each batch.
    """
    done = {table: 0 for table, _ in cut.tables()}
    for table, before in cut.tables():
        if before is None:
            continue
        batches, start = 0, 0
        while max_batches is None or batches < max_batches:
            step = run_transaction(prune_batch, table, before, start=start, batch=batch)
            batches += 1
            done[table] += step.deleted
            if on_batch is not None and step.deleted:
                on_batch(table, step.deleted)
            if step.last:
                break
            start = step.end
    return done


def oldest_kept(conn: Connection) -> dict[str, datetime | None]:
    """When the oldest usage started and the oldest event happened (None: the table is empty)."""
    first_usage = select(usages.c.started_at).order_by(usages.c.id).limit(1).scalar_subquery()
    first_event = select(events.c.at).order_by(events.c.seq).limit(1).scalar_subquery()
    row = conn.execute(select(first_usage, first_event)).one()
    return {"usages": row[0], "events": row[1]}


def run_prune(app, *, now: datetime | None = None, max_batches: int | None = None) -> dict[str, int]:
    """Prune by `app`'s settings at `now` (default: the token clock, else the process clock),
    with one telemetry event per table that lost rows. Raises what the database raises."""
    with app.app_context():
        cut = cutoffs(app.config, now or clock_now(app))
        done = prune(cut, max_batches=max_batches)
        for table, count in done.items():
            if count:
                emit("prune", "success", reason=table, count=count)
        return done
