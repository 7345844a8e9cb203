"""The NOTIFY of new events moves from every writing transaction to the publisher.

0011's statement trigger on `events` sent `NOTIFY tokenpool_events` from every
transaction that wrote an event: every activation. PostgreSQL serialises the
commits of transactions that notify (one lock, held through the commit's WAL
flush), so activations queued behind each other's commits: at a fixed 450
activations/s the 99th percentile reached 46-120 ms with the trigger and
9-16 ms without it. The transaction that numbers new events
(service/events/outbox.py `publish`, a few per second) sends the notice now;
this drops the trigger. The downgrade puts it back (the code of this revision
still notifies on publish: a feed woken twice reads once more). PostgreSQL
only; nothing to do on SQLite.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

CHANNEL = "tokenpool_events"


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute("DROP FUNCTION tokenpool_events_notify()")


def downgrade():
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
