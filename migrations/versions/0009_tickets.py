"""Tickets of the `queue` policy: who waits for a token of a full pool, first in, first out.

`tickets.id` (a sequence) is the order of the queue; `ticket_id` is the
random id the waiting user is given. A user has at most one waiting ticket
per pool (a partial unique index). A granted ticket keeps its lease's token,
`lease_id`, fencing token and times.

On PostgreSQL the activation function learns one rule: in a `queue` pool
with waiting tickets, a newcomer joins the queue (outcome `full`) instead of
taking a token the queue is owed (an expired lease waiting for its hand-over).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

QUEUE_RULE = """
    -- a queue pool with waiting tickets: a newcomer joins the queue (first in, first out)
    IF v_pool.policy = 'queue' THEN
        IF EXISTS (
            SELECT 1 FROM tickets k
             WHERE k.pool_id = v_pool.id AND k.status = 'waiting'
               AND k.expires_at > coalesce(p_now, clock_timestamp())
        ) THEN
            RETURN QUERY SELECT NULL::uuid, coalesce(p_now, clock_timestamp()), NULL::timestamptz,
                                'full'::text, NULL::uuid, NULL::bigint;
            RETURN;
        END IF;
    END IF;

    -- free tokens sort first"""
ANCHOR = "\n    -- free tokens sort first"


def _previous_function() -> str:
    """Revision 0007's activation function (one copy of it, read from that file)."""
    path = Path(__file__).with_name("0007_pools.py")
    spec = importlib.util.spec_from_file_location("tokenpool_migration_0007", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ACTIVATE_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def activate_function() -> str:
    """The activation function of this revision: 0007's with the queue rule."""
    previous = _previous_function()
    assert previous.count(ANCHOR) == 1, "0007's activation function changed: place the queue rule again"
    return previous.replace(ANCHOR, QUEUE_RULE, 1)


def upgrade():
    op.create_table(
        "tickets",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("ticket_id", sa.Uuid(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=9), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token_id", sa.Uuid(), nullable=True),
        sa.Column("lease_id", sa.Uuid(), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('waiting', 'granted', 'cancelled', 'expired')", name=op.f("ck_tickets_status_known")
        ),
        sa.CheckConstraint(
            "(status = 'granted') = (token_id IS NOT NULL AND lease_id IS NOT NULL"
            " AND fencing_token IS NOT NULL AND activated_at IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name=op.f("ck_tickets_granted_has_lease"),
        ),
        sa.CheckConstraint("(status = 'waiting') = (settled_at IS NULL)", name=op.f("ck_tickets_settled")),
        sa.CheckConstraint("expires_at > queued_at", name=op.f("ck_tickets_expires_after_queued")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tickets")),
        sa.UniqueConstraint("ticket_id", name=op.f("uq_tickets_ticket_id")),
    )
    where = sa.text("status = 'waiting'")
    op.create_index(
        "uq_tickets_pool_id_user_id_waiting",
        "tickets",
        ["pool_id", "user_id"],
        unique=True,
        postgresql_where=where,
        sqlite_where=where,
    )
    op.create_index(
        "ix_tickets_pool_id_id_waiting",
        "tickets",
        ["pool_id", "id"],
        postgresql_where=where,
        sqlite_where=where,
    )
    op.create_index(
        "ix_tickets_expires_at_waiting", "tickets", ["expires_at"], postgresql_where=where, sqlite_where=where
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(activate_function())


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_previous_function())
    op.drop_index("ix_tickets_expires_at_waiting", table_name="tickets")
    op.drop_index("ix_tickets_pool_id_id_waiting", table_name="tickets")
    op.drop_index("uq_tickets_pool_id_user_id_waiting", table_name="tickets")
    op.drop_table("tickets")
