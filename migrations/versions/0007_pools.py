"""Named pools: a pool table, tokens that belong to a pool, retirement and fencing tokens.

Every existing token, lease and usage becomes the `default` pool's (id 1):
`tokens.pool_id` is added with the constant default 1, which PostgreSQL
stores in the catalogue without rewriting the table. `token_usages` gets one
new nullable column (no rewrite either) and an index for a user's leases;
no usage row is rewritten except the open ones, which get their fencing
tokens (1..n in order of start) here, so the `default` pool's counter
starts above every lease running at the upgrade. Leases that ended before
the upgrade have no fencing token (null). Measured on PostgreSQL 15 with a
million usages: docs/PERFORMANCE.md, section "Pools".

The default pool's size starts at the number of tokens (at least 1; `total`, the
count of tokens that are not retired, kept by triggers, never exceeds it) and its
lifetime at 120 s; `flask tokens seed` and the service set both from
MAX_ACTIVE_TOKENS and TOKEN_LIFETIME_SECONDS.

Rolling upgrade on PostgreSQL: `tokenpool_activate(uuid, timestamptz,
interval)`, the previous release's call, stays as the `default` pool's
activation, so old and new processes lease from one pool during the rollout.

Downgrade keeps the `default` pool's tokens and usages (retired tokens become
ordinary tokens again) and deletes the other pools with their tokens and
their history: the previous schema has one pool only.

The events outbox (0006) now names each lease's pool and carries its fencing
token: its triggers on `token_usages` read them from the token's pool.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_SIGNATURE = "tokenpool_activate(uuid, timestamptz, interval)"
NEW_SIGNATURE = "tokenpool_activate(text, uuid, timestamptz, interval)"

# One transaction, each statement on fresh data (READ COMMITTED): see
# service/tokens/service.py `_activate_portable` for the same steps in Python.
# outcome: existing | available | expired | evicted (a lease was granted or is
# the caller's already); rejected | full (the pool is full and its policy is
# reject | queue: `activated_at` is the decision time, `expires_at` when the
# pool's earliest active lease ends);
# no_pool | empty (no such pool, or it holds no token).
ACTIVATE_FUNCTION = """
CREATE FUNCTION tokenpool_activate(p_pool text, p_user uuid, p_now timestamptz, p_lifetime interval)
RETURNS TABLE (token_id uuid, activated_at timestamptz, expires_at timestamptz, outcome text,
               lease_id uuid, fencing_token bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_pool record;
    v_lifetime interval;
    v_now timestamptz;
    v_own record;
    v_cand record;
    v_end timestamptz;
    v_outcome text := 'available';
    v_lease uuid;
    v_fence bigint;
BEGIN
    SELECT p.id, p.lifetime_seconds, p.policy INTO v_pool FROM pools p WHERE p.name = p_pool;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::uuid, NULL::timestamptz, NULL::timestamptz, 'no_pool'::text,
                            NULL::uuid, NULL::bigint;
        RETURN;
    END IF;
    v_lifetime := coalesce(p_lifetime, make_interval(secs => v_pool.lifetime_seconds));
    -- same user twice in one pool: serialise, so the second sees the first's lease
    PERFORM pg_advisory_xact_lock(hashtextextended(p_user::text, 7316 + v_pool.id));

    SELECT t.id, t.activated_at, t.expires_at, t.lease_id, t.fencing_token INTO v_own
      FROM tokens t WHERE t.pool_id = v_pool.id AND t.current_user_id = p_user FOR UPDATE;
    -- the clock is read after each lock: a lease another transaction committed
    -- while we waited must not end before it started
    v_now := coalesce(p_now, clock_timestamp());
    IF FOUND THEN
        IF v_own.expires_at > v_now THEN
            RETURN QUERY SELECT v_own.id, v_own.activated_at, v_own.expires_at, 'existing'::text,
                                v_own.lease_id, v_own.fencing_token;
            RETURN;
        END IF;
        UPDATE token_usages u SET ended_at = v_own.expires_at, end_reason = 'expired'
         WHERE u.token_id = v_own.id AND u.ended_at IS NULL;
        UPDATE tokens t SET current_user_id = NULL, lease_id = NULL, released_at = v_own.expires_at
         WHERE t.id = v_own.id;
    END IF;

    -- free tokens sort first (least recently released), then the lease ending first
    SELECT t.id, t.current_user_id, t.expires_at INTO v_cand
      FROM tokens t WHERE t.pool_id = v_pool.id AND t.retired_at IS NULL
     ORDER BY t.expires_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN  -- every row locked right now: wait for the first one
        SELECT t.id, t.current_user_id, t.expires_at INTO v_cand
          FROM tokens t WHERE t.pool_id = v_pool.id AND t.retired_at IS NULL
         ORDER BY t.expires_at, t.id LIMIT 1 FOR UPDATE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT NULL::uuid, NULL::timestamptz, NULL::timestamptz, 'empty'::text,
                                NULL::uuid, NULL::bigint;
            RETURN;
        END IF;
    END IF;

    -- the pool is full: the one place where its policy decides
    IF v_cand.current_user_id IS NOT NULL AND v_cand.expires_at > coalesce(p_now, clock_timestamp())
       AND v_pool.policy <> 'evict' THEN
        RETURN QUERY
            SELECT NULL::uuid, coalesce(p_now, clock_timestamp()), min(t.expires_at),
                   CASE v_pool.policy WHEN 'reject' THEN 'rejected' ELSE 'full' END, NULL::uuid, NULL::bigint
              FROM tokens t
             WHERE t.pool_id = v_pool.id AND t.retired_at IS NULL AND t.current_user_id IS NOT NULL;
        RETURN;
    END IF;

    -- the grant: the pool's counter is taken last and held to the commit, and the
    -- clock read after it, so within a pool fencing tokens grow with start times
    UPDATE pools p SET fencing_token = p.fencing_token + 1 WHERE p.id = v_pool.id
    RETURNING p.fencing_token INTO v_fence;
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
    END IF;

    v_lease := gen_random_uuid();
    UPDATE tokens t
       SET current_user_id = p_user, lease_id = v_lease, fencing_token = v_fence, activated_at = v_now,
           expires_at = v_now + v_lifetime, released_at = coalesce(v_end, t.released_at)
     WHERE t.id = v_cand.id;
    INSERT INTO token_usages (token_id, user_id, started_at, lease_id, fencing_token)
    VALUES (v_cand.id, p_user, v_now, v_lease, v_fence);
    RETURN QUERY SELECT v_cand.id, v_now, v_now + v_lifetime, v_outcome, v_lease, v_fence;
END
$$;
"""

# the previous release's call: the default pool's activation, five columns as before
DEFAULT_POOL_FUNCTION = """
CREATE FUNCTION tokenpool_activate(p_user uuid, p_now timestamptz, p_lifetime interval)
RETURNS TABLE (token_id uuid, activated_at timestamptz, expires_at timestamptz, outcome text, lease_id uuid)
LANGUAGE sql AS $$
    SELECT a.token_id, a.activated_at, a.expires_at, a.outcome, a.lease_id
      FROM tokenpool_activate('default'::text, p_user, p_now, p_lifetime) a
     WHERE a.token_id IS NOT NULL
$$;
"""

# Never more tokens that are not retired than the pool's size: `pools.total` counts
# them, kept by triggers on every insert and delete of tokens (per statement on
# PostgreSQL, so seeding a million costs one update per batch) and every
# retirement (per row, and only when `retired_at` is set: an activation never
# fires one), and the check `total <= size` refuses the rest. A retirement is final.
COUNT_TRIGGERS = """
CREATE FUNCTION tokenpool_count_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pools p SET total = p.total + a.n
      FROM (SELECT pool_id, count(*) AS n FROM added WHERE retired_at IS NULL GROUP BY pool_id) a
     WHERE p.id = a.pool_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tokens_count_added AFTER INSERT ON tokens
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tokenpool_count_added();

CREATE FUNCTION tokenpool_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pools p SET total = p.total - r.n
      FROM (SELECT pool_id, count(*) AS n FROM removed WHERE retired_at IS NULL GROUP BY pool_id) r
     WHERE p.id = r.pool_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tokens_count_removed AFTER DELETE ON tokens
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION tokenpool_count_removed();

CREATE FUNCTION tokenpool_count_retired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pools p SET total = p.total - 1 WHERE p.id = NEW.pool_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tokens_count_retired AFTER UPDATE OF retired_at ON tokens
    FOR EACH ROW WHEN (OLD.retired_at IS NULL AND NEW.retired_at IS NOT NULL)
    EXECUTE FUNCTION tokenpool_count_retired();

CREATE FUNCTION tokenpool_retirement_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a retired token stays retired, and a token stays in its pool'
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER tokens_retirement_final BEFORE UPDATE OF retired_at, pool_id ON tokens
    FOR EACH ROW WHEN (OLD.retired_at IS DISTINCT FROM NEW.retired_at AND OLD.retired_at IS NOT NULL
                       OR OLD.pool_id <> NEW.pool_id)
    EXECUTE FUNCTION tokenpool_retirement_final();
"""
DROP_COUNT_TRIGGERS = """
DROP TRIGGER tokens_retirement_final ON tokens;
DROP FUNCTION tokenpool_retirement_final();
DROP TRIGGER tokens_count_retired ON tokens;
DROP FUNCTION tokenpool_count_retired();
DROP TRIGGER tokens_count_removed ON tokens;
DROP FUNCTION tokenpool_count_removed();
DROP TRIGGER tokens_count_added ON tokens;
DROP FUNCTION tokenpool_count_added();
"""
# the same on SQLite, per row (the embedded default: small pools)
SQLITE_COUNT_TRIGGERS = {
    "tokens_count_added": "CREATE TRIGGER tokens_count_added AFTER INSERT ON tokens"
    " WHEN NEW.retired_at IS NULL BEGIN UPDATE pools SET total = total + 1 WHERE id = NEW.pool_id; END",
    "tokens_count_removed": "CREATE TRIGGER tokens_count_removed AFTER DELETE ON tokens"
    " WHEN OLD.retired_at IS NULL BEGIN UPDATE pools SET total = total - 1 WHERE id = OLD.pool_id; END",
    "tokens_count_retired": "CREATE TRIGGER tokens_count_retired AFTER UPDATE OF retired_at ON tokens"
    " WHEN OLD.retired_at IS NULL AND NEW.retired_at IS NOT NULL"
    " BEGIN UPDATE pools SET total = total - 1 WHERE id = NEW.pool_id; END",
    "tokens_retirement_final": "CREATE TRIGGER tokens_retirement_final BEFORE UPDATE OF retired_at, pool_id"
    " ON tokens WHEN OLD.retired_at IS NOT NULL AND NEW.retired_at IS NOT OLD.retired_at"
    " OR OLD.pool_id <> NEW.pool_id"
    " BEGIN SELECT RAISE(ABORT, 'a retired token stays retired, and a token stays in its pool'); END",
}

RETIRED_RULE = (
    "ck_tokens_no_lease_after_retirement",
    "retired_at IS NULL OR activated_at IS NULL OR activated_at <= retired_at",
)


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _sqlite_triggers() -> dict[str, str]:
    """SQLite cannot add a CHECK to an existing table without rebuilding it (see 0005): triggers."""
    name, rule = RETIRED_RULE
    row_rule = rule.replace("retired_at", "NEW.retired_at").replace("activated_at", "NEW.activated_at")
    return {
        f"{name}_{when}": f"CREATE TRIGGER {name}_{when} BEFORE {when.upper()} ON tokens"
        f" WHEN NOT ({row_rule})"
        f" BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END"
        for when in ("insert", "update")
    }


def _create_pools() -> None:
    pools = op.create_table(
        "pools",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("lifetime_seconds", sa.Integer(), nullable=False),
        sa.Column("max_lifetime_seconds", sa.Integer(), nullable=True),
        sa.Column("policy", sa.String(length=8), nullable=False),
        sa.Column("max_queue", sa.Integer(), nullable=False),
        sa.Column("max_wait_seconds", sa.Integer(), nullable=False),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("size >= 1", name=op.f("ck_pools_size_positive")),
        sa.CheckConstraint("total >= 0 AND total <= size", name=op.f("ck_pools_total_within_size")),
        sa.CheckConstraint("lifetime_seconds >= 1", name=op.f("ck_pools_lifetime_positive")),
        sa.CheckConstraint(
            "max_lifetime_seconds IS NULL OR max_lifetime_seconds >= lifetime_seconds",
            name=op.f("ck_pools_max_lifetime_not_shorter"),
        ),
        sa.CheckConstraint("policy IN ('evict', 'reject', 'queue')", name=op.f("ck_pools_policy_known")),
        sa.CheckConstraint("max_queue >= 0 AND max_wait_seconds >= 1", name=op.f("ck_pools_queue_limits")),
        sa.CheckConstraint("fencing_token >= 0", name=op.f("ck_pools_fencing_token_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_pools_name")),
    )
    bind = op.get_bind()
    tokens_now = bind.execute(sa.text("SELECT count(*) FROM tokens")).scalar()
    op.bulk_insert(
        pools,
        [
            {
                "id": 1,
                "name": "default",
                "size": max(tokens_now, 1),
                "lifetime_seconds": 120,
                "max_lifetime_seconds": None,
                "policy": "evict",
                "max_queue": 1000,
                "max_wait_seconds": 300,
                "fencing_token": 0,
                "total": tokens_now,
                "created_at": datetime.now(UTC),
            }
        ],
    )
    if _is_postgres():  # the next pool created gets id 2
        op.execute("SELECT setval(pg_get_serial_sequence('pools', 'id'), 1)")


def _fence_open_leases() -> None:
    """Each open lease gets a fencing token, 1..n in order of start; the pool's counter is n."""
    bind = op.get_bind()
    if _is_postgres():
        op.execute(
            "UPDATE token_usages u SET fencing_token = o.n FROM ("
            " SELECT id, row_number() OVER (ORDER BY started_at, id) AS n"
            " FROM token_usages WHERE ended_at IS NULL) o WHERE u.id = o.id"
        )
        op.execute(
            "UPDATE tokens t SET fencing_token = u.fencing_token FROM token_usages u"
            " WHERE u.token_id = t.id AND u.ended_at IS NULL AND t.current_user_id IS NOT NULL"
        )
    else:  # the embedded default: a small pool
        opened = bind.execute(
            sa.text("SELECT id, token_id FROM token_usages WHERE ended_at IS NULL ORDER BY started_at, id")
        ).all()
        for n, (usage_id, token_id) in enumerate(opened, start=1):
            bind.execute(
                sa.text("UPDATE token_usages SET fencing_token = :n WHERE id = :id"), {"n": n, "id": usage_id}
            )
            bind.execute(
                sa.text(
                    "UPDATE tokens SET fencing_token = :n WHERE id = :id AND current_user_id IS NOT NULL"
                ),
                {"n": n, "id": token_id},  # as stored
            )
    op.execute("UPDATE pools SET fencing_token = (SELECT count(*) FROM token_usages WHERE ended_at IS NULL)")


def upgrade():
    _create_pools()
    op.add_column("tokens", sa.Column("pool_id", sa.Integer(), server_default=sa.text("1"), nullable=False))
    op.add_column("tokens", sa.Column("fencing_token", sa.BigInteger(), nullable=True))
    op.add_column("tokens", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("token_usages", sa.Column("fencing_token", sa.BigInteger(), nullable=True))
    _fence_open_leases()

    op.drop_index("uq_tokens_current_user_id", table_name="tokens")
    op.create_index(
        "uq_tokens_pool_id_current_user_id",
        "tokens",
        ["pool_id", "current_user_id"],
        unique=True,
        postgresql_where=sa.text("current_user_id IS NOT NULL"),
        sqlite_where=sa.text("current_user_id IS NOT NULL"),
    )
    op.create_index(
        "ix_tokens_pool_id_expires_at_id",
        "tokens",
        ["pool_id", "expires_at", "id"],
        postgresql_where=sa.text("retired_at IS NULL"),
        sqlite_where=sa.text("retired_at IS NULL"),
    )
    op.create_index("ix_token_usages_user_id_id", "token_usages", ["user_id", "id"])
    # the sweeper's index holds only held tokens now: the pool index serves activation
    op.drop_index("ix_tokens_expires_at_id", table_name="tokens")
    op.create_index(
        "ix_tokens_held_expires_at",
        "tokens",
        ["expires_at"],
        postgresql_where=sa.text("current_user_id IS NOT NULL"),
        sqlite_where=sa.text("current_user_id IS NOT NULL"),
    )

    name, rule = RETIRED_RULE
    if _is_postgres():
        op.create_check_constraint(op.f(name), "tokens", rule)
        op.execute(COUNT_TRIGGERS)
        op.execute(f"DROP FUNCTION {OLD_SIGNATURE}")
        op.execute(ACTIVATE_FUNCTION)
        op.execute(DEFAULT_POOL_FUNCTION)
    else:
        for sql in (*_sqlite_triggers().values(), *SQLITE_COUNT_TRIGGERS.values()):
            op.execute(sql)
    _events_name_pools(upgrading=True)


# 0006's event triggers, now with the lease's pool and fencing token
PG_EVENT_FUNCTIONS = """
CREATE OR REPLACE FUNCTION tokenpool_usage_started() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
    SELECT 'leased', p.name, n.token_id, n.user_id, n.fencing_token, n.started_at
      FROM added n JOIN tokens t ON t.id = n.token_id JOIN pools p ON p.id = t.pool_id ORDER BY n.id;
    UPDATE tokens t SET usage_count = t.usage_count + a.n
      FROM (SELECT token_id, count(*) AS n FROM added GROUP BY token_id) a WHERE t.id = a.token_id;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION tokenpool_usage_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
    SELECT n.end_reason, p.name, n.token_id, n.user_id, n.fencing_token, n.ended_at
      FROM after_rows n JOIN before_rows o ON o.id = n.id
      JOIN tokens t ON t.id = n.token_id JOIN pools p ON p.id = t.pool_id
     WHERE o.ended_at IS NULL AND n.ended_at IS NOT NULL
     ORDER BY n.ended_at, n.id;
    RETURN NULL;
END $$;
"""
POOL_OF = "(SELECT p.name FROM tokens t JOIN pools p ON p.id = t.pool_id WHERE t.id = NEW.token_id)"
SQLITE_EVENT_TRIGGERS = (
    f"""CREATE TRIGGER tokenpool_usage_started AFTER INSERT ON token_usages BEGIN
        INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
        VALUES ('leased', {POOL_OF}, NEW.token_id, NEW.user_id, NEW.fencing_token, NEW.started_at);
        UPDATE tokens SET usage_count = usage_count + 1 WHERE id = NEW.token_id;
    END""",
    f"""CREATE TRIGGER tokenpool_usage_ended AFTER UPDATE OF ended_at ON token_usages
    WHEN OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL BEGIN
        INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
        VALUES (NEW.end_reason, {POOL_OF}, NEW.token_id, NEW.user_id, NEW.fencing_token, NEW.ended_at);
    END""",
)


def _revision(filename: str):
    """An earlier revision's module (its SQL texts), read from its file beside this one."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"tokenpool_migration_{filename[:4]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _events_name_pools(upgrading: bool) -> None:
    if _is_postgres():
        if upgrading:
            op.execute(PG_EVENT_FUNCTIONS)
        else:
            previous = _revision("0006_events.py")
            op.execute(previous.PG_DROP)
            op.execute(previous.PG_TRIGGERS)
        return
    op.execute("DROP TRIGGER tokenpool_usage_started")
    op.execute("DROP TRIGGER tokenpool_usage_ended")
    for sql in SQLITE_EVENT_TRIGGERS if upgrading else _revision("0006_events.py").SQLITE_TRIGGERS:
        op.execute(sql)


def downgrade():
    name, _rule = RETIRED_RULE
    _events_name_pools(upgrading=False)
    if _is_postgres():
        op.execute(f"DROP FUNCTION {OLD_SIGNATURE}")
        op.execute(f"DROP FUNCTION {NEW_SIGNATURE}")
        op.execute(_revision("0005_lease_ids.py").ACTIVATE_FUNCTION)
        op.execute(DROP_COUNT_TRIGGERS)
        op.drop_constraint(op.f(name), "tokens", type_="check")
    else:
        for trigger in (*_sqlite_triggers(), *SQLITE_COUNT_TRIGGERS):
            op.execute(f"DROP TRIGGER {trigger}")
    # one pool again: the others go, with their history (usages cascade with their tokens)
    op.execute("DELETE FROM tokens WHERE pool_id <> 1")
    op.drop_index("ix_token_usages_user_id_id", table_name="token_usages")
    op.drop_index("ix_tokens_held_expires_at", table_name="tokens")
    op.create_index("ix_tokens_expires_at_id", "tokens", ["expires_at", "id"])
    op.drop_index("ix_tokens_pool_id_expires_at_id", table_name="tokens")
    op.drop_index("uq_tokens_pool_id_current_user_id", table_name="tokens")
    op.create_index(
        "uq_tokens_current_user_id",
        "tokens",
        ["current_user_id"],
        unique=True,
        postgresql_where=sa.text("current_user_id IS NOT NULL"),
        sqlite_where=sa.text("current_user_id IS NOT NULL"),
    )
    for table, column in (
        ("token_usages", "fencing_token"),
        ("tokens", "retired_at"),
        ("tokens", "fencing_token"),
        ("tokens", "pool_id"),
    ):
        if _is_postgres():
            op.drop_column(table, column)
        else:  # no rebuild (see 0005): SQLite drops a plain column in place
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    op.drop_table("pools")
