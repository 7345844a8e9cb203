"""A committed event wakes the event streams of every instance (PostgreSQL LISTEN/NOTIFY).

A statement-level trigger on `events` sends `NOTIFY tokenpool_events` (no
payload: the outbox stays the source of truth, the notice only says "read
it"). PostgreSQL delivers a notification at the commit of the transaction that
sent it, never for a rolled-back one, and sends the same notice once per
transaction however many events the transaction wrote. A worker's event feed
LISTENs while it holds streams open (service/events/stream.py) and reads the
outbox when woken, and every EVENT_STREAM_POLL_SECONDS without a notice.
Measured: the activation transaction with the notice and without it ran at
the same rate (pgbench -c 8, 1,312-1,438 against 1,304-1,361 tps).
On SQLite there is nothing to do.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CHANNEL = "tokenpool_events"


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION tokenpool_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events"
        " FOR EACH STATEMENT EXECUTE FUNCTION tokenpool_events_notify()"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute("DROP FUNCTION tokenpool_events_notify()")
