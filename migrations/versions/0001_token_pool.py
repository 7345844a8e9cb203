"""Token pool: tokens, usages, sweeper state, and the PostgreSQL activation function.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# One transaction, each statement on fresh data (READ COMMITTED): see
# service/tokens/service.py `_activate_portable` for the same steps in Python.
ACTIVATE_FUNCTION = """
CREATE OR REPLACE FUNCTION tokenpool_activate(p_user uuid, p_now timestamptz, p_lifetime interval)
RETURNS TABLE (token_id uuid, activated_at timestamptz, expires_at timestamptz, outcome text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz;
    v_own record;
    v_cand record;
    v_end timestamptz;
    v_outcome text := 'available';
BEGIN
    -- same user twice: serialise, so the second sees the first's lease
    PERFORM pg_advisory_xact_lock(hashtextextended(p_user::text, 7316));

    SELECT t.id, t.activated_at, t.expires_at INTO v_own
      FROM tokens t WHERE t.current_user_id = p_user FOR UPDATE;
    -- the clock is read after each lock: a lease another transaction committed
    -- while we waited must not end before it started
    v_now := coalesce(p_now, clock_timestamp());
    IF FOUND THEN
        IF v_own.expires_at > v_now THEN
            RETURN QUERY SELECT v_own.id, v_own.activated_at, v_own.expires_at, 'existing'::text;
            RETURN;
        END IF;
        UPDATE token_usages u SET ended_at = v_own.expires_at, end_reason = 'expired'
         WHERE u.token_id = v_own.id AND u.ended_at IS NULL;
        UPDATE tokens t SET current_user_id = NULL, released_at = v_own.expires_at
         WHERE t.id = v_own.id;
    END IF;

    -- free tokens sort first (least recently released), then the lease ending first
    SELECT t.id, t.current_user_id, t.expires_at INTO v_cand
      FROM tokens t ORDER BY t.expires_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN  -- every row locked right now: wait for the first one
        SELECT t.id, t.current_user_id, t.expires_at INTO v_cand
          FROM tokens t ORDER BY t.expires_at, t.id LIMIT 1 FOR UPDATE;
        IF NOT FOUND THEN
            RETURN;  -- empty pool
        END IF;
    END IF;
    v_now := coalesce(p_now, clock_timestamp());

    IF v_cand.current_user_id IS NOT NULL THEN
        IF v_cand.expires_at <= v_now THEN
            v_outcome := 'expired';
            v_end := v_cand.expires_at;
        ELSE
            v_outcome := 'evicted';
            v_end := v_now;
        END IF;
        UPDATE token_usages u SET ended_at = v_end, end_reason = v_outcome
         WHERE u.token_id = v_cand.id AND u.ended_at IS NULL;
        UPDATE tokens t SET released_at = v_end WHERE t.id = v_cand.id;
    END IF;

    UPDATE tokens t
       SET current_user_id = p_user, activated_at = v_now, expires_at = v_now + p_lifetime
     WHERE t.id = v_cand.id;
    INSERT INTO token_usages (token_id, user_id, started_at) VALUES (v_cand.id, p_user, v_now);
    RETURN QUERY SELECT v_cand.id, v_now, v_now + p_lifetime, v_outcome;
END
$$;
"""


def upgrade():
    op.create_table(
        "tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("current_user_id", sa.Uuid(), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "current_user_id IS NULL OR activated_at IS NOT NULL",
            name=op.f("ck_tokens_holder_has_lease"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
    )
    op.create_index("ix_tokens_expires_at_id", "tokens", ["expires_at", "id"])
    op.create_index(
        "uq_tokens_current_user_id",
        "tokens",
        ["current_user_id"],
        unique=True,
        postgresql_where=sa.text("current_user_id IS NOT NULL"),
        sqlite_where=sa.text("current_user_id IS NOT NULL"),
    )
    op.create_table(
        "token_usages",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.CheckConstraint(
            "end_reason IS NULL OR end_reason IN ('released', 'expired', 'evicted', 'cleared')",
            name=op.f("ck_token_usages_end_reason_known"),
        ),
        sa.CheckConstraint(
            "(ended_at IS NULL) = (end_reason IS NULL)", name=op.f("ck_token_usages_ended_with_reason")
        ),
        sa.CheckConstraint(
            "ended_at IS NULL OR ended_at >= started_at", name=op.f("ck_token_usages_ends_after_start")
        ),
        sa.ForeignKeyConstraint(
            ["token_id"], ["tokens.id"], name=op.f("fk_token_usages_token_id_tokens"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_usages")),
    )
    op.create_index("ix_token_usages_token_id_id", "token_usages", ["token_id", "id"])
    op.create_index(
        "uq_token_usages_open_token_id",
        "token_usages",
        ["token_id"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
        sqlite_where=sa.text("ended_at IS NULL"),
    )
    sweeper_state = op.create_table(
        "sweeper_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_expired_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeper_state")),
    )
    op.bulk_insert(sweeper_state, [{"id": 1, "last_run_at": None, "last_expired_count": 0}])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ACTIVATE_FUNCTION)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS tokenpool_activate(uuid, timestamptz, interval)")
    op.drop_table("sweeper_state")
    op.drop_index("uq_token_usages_open_token_id", table_name="token_usages")
    op.drop_index("ix_token_usages_token_id_id", table_name="token_usages")
    op.drop_table("token_usages")
    op.drop_index("uq_tokens_current_user_id", table_name="tokens")
    op.drop_index("ix_tokens_expires_at_id", table_name="tokens")
    op.drop_table("tokens")
