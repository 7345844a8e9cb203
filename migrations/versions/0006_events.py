"""Events: an outbox of every lease change, written by triggers in the changing transaction;
and each token's count of leases, kept by the same trigger.

A lease starts with a usage row and ends when that row gets its `ended_at`;
triggers on `token_usages` turn each of those into an event row in the same
transaction (`leased`, and `released | expired | evicted | cleared` with
`at = ended_at`), whatever code path made the change. `renewed` (and the
queue's events) are written by `service.events.outbox.record_event`.

An event gets its public `event_id` later, from `publish` (one publisher at a
time, in the order of `seq`): `event_id` order is then the order in which events
became visible, which a sequence value taken inside the writing transaction is
not (a transaction that took a smaller value can commit after a larger one, and
a reader past the larger one would skip it).

`tokens.usage_count` counts every lease the token ever had (all time: it
keeps counting when retention deletes old usage rows), one more per usage row
inserted, so reading it costs nothing however long the history. The upgrade
counts the existing rows once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TYPES = ("leased", "renewed", "released", "expired", "evicted", "cleared", "queued", "granted", "cancelled")

# PostgreSQL: one INSERT per statement (a sweep closes thousands of usages in one UPDATE)
PG_TRIGGERS = """
CREATE FUNCTION tokenpool_usage_started() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
    SELECT 'leased', 'default', n.token_id, n.user_id, NULL, n.started_at FROM added n ORDER BY n.id;
    UPDATE tokens t SET usage_count = t.usage_count + a.n
      FROM (SELECT token_id, count(*) AS n FROM added GROUP BY token_id) a WHERE t.id = a.token_id;
    RETURN NULL;
END $$;
CREATE TRIGGER tokenpool_usage_started AFTER INSERT ON token_usages
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tokenpool_usage_started();
CREATE FUNCTION tokenpool_usage_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
    SELECT n.end_reason, 'default', n.token_id, n.user_id, NULL, n.ended_at
      FROM after_rows n JOIN before_rows o ON o.id = n.id
     WHERE o.ended_at IS NULL AND n.ended_at IS NOT NULL
     ORDER BY n.ended_at, n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER tokenpool_usage_ended AFTER UPDATE ON token_usages
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tokenpool_usage_ended();
"""
PG_DROP = """
DROP TRIGGER tokenpool_usage_ended ON token_usages;
DROP FUNCTION tokenpool_usage_ended();
DROP TRIGGER tokenpool_usage_started ON token_usages;
DROP FUNCTION tokenpool_usage_started();
"""

SQLITE_TRIGGERS = (
    """CREATE TRIGGER tokenpool_usage_started AFTER INSERT ON token_usages BEGIN
        INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
        VALUES ('leased', 'default', NEW.token_id, NEW.user_id, NULL, NEW.started_at);
        UPDATE tokens SET usage_count = usage_count + 1 WHERE id = NEW.token_id;
    END""",
    """CREATE TRIGGER tokenpool_usage_ended AFTER UPDATE OF ended_at ON token_usages
    WHEN OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL BEGIN
        INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
        VALUES (NEW.end_reason, 'default', NEW.token_id, NEW.user_id, NULL, NEW.ended_at);
    END""",
)


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade():
    # no batch rebuild on SQLite: it would drop revision 0005's triggers on tokens
    op.add_column(
        "tokens", sa.Column("usage_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.execute(
        "UPDATE tokens SET usage_count = (SELECT count(*) FROM token_usages u WHERE u.token_id = tokens.id)"
        " WHERE EXISTS (SELECT 1 FROM token_usages u WHERE u.token_id = tokens.id)"
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("pool", sa.String(length=63), nullable=False),
        sa.Column("token_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "type IN (" + ", ".join(f"'{t}'" for t in TYPES) + ")", name=op.f("ck_events_type_known")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_events_event_id")),
    )
    op.create_index("ix_events_pool_event_id", "events", ["pool", "event_id"])
    op.create_index(
        "ix_events_unpublished",
        "events",
        ["seq"],
        postgresql_where=sa.text("event_id IS NULL"),
        sqlite_where=sa.text("event_id IS NULL"),
    )
    if _is_postgres():
        op.execute(PG_TRIGGERS)
    else:
        for sql in SQLITE_TRIGGERS:
            op.execute(sql)


def downgrade():
    if _is_postgres():
        op.execute(PG_DROP)
    else:
        op.execute("DROP TRIGGER tokenpool_usage_ended")
        op.execute("DROP TRIGGER tokenpool_usage_started")
    op.drop_index("ix_events_unpublished", table_name="events")
    op.drop_index("ix_events_pool_event_id", table_name="events")
    op.drop_table("events")
    if _is_postgres():
        op.drop_column("tokens", "usage_count")
    else:  # in place, as revision 0005 drops its columns
        op.execute("ALTER TABLE tokens DROP COLUMN usage_count")
