"""Lease ids: the secret a holder presents to release or renew its lease.

`tokens.lease_id` is the current lease's id (a holder always has one; the
service clears it when the lease ends); `token_usages.lease_id` the id of the
lease that row records (null only on leases that ended before this
revision). Every open lease gets one here, so leases granted before the
upgrade can still be ended by an admin and expire as usual (their holders
never received the id).

Rolling upgrade on PostgreSQL: the previous release's code keeps working on
this schema (its activations go through the new function; its releases and
sweeps clear only `current_user_id`, which the checks allow) but it does not
ask for lease ids, so finish the rollout before relying on them.

`tokenpool_activate` grants each new lease a random UUID (gen_random_uuid,
PostgreSQL's cryptographic random source) and returns it as a fifth column;
its arguments are unchanged, so a caller that selects the four old columns
by name keeps working during a rolling upgrade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import importlib.util
import uuid
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ACTIVATE_SIGNATURE = "tokenpool_activate(uuid, timestamptz, interval)"

# One transaction, each statement on fresh data (READ COMMITTED): see
# service/tokens/service.py `_activate_portable` for the same steps in Python.
ACTIVATE_FUNCTION = """
CREATE FUNCTION tokenpool_activate(p_user uuid, p_now timestamptz, p_lifetime interval)
RETURNS TABLE (token_id uuid, activated_at timestamptz, expires_at timestamptz, outcome text, lease_id uuid)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz;
    v_own record;
    v_cand record;
    v_end timestamptz;
    v_outcome text := 'available';
    v_lease uuid;
BEGIN
    -- same user twice: serialise, so the second sees the first's lease
    PERFORM pg_advisory_xact_lock(hashtextextended(p_user::text, 7316));

    SELECT t.id, t.activated_at, t.expires_at, t.lease_id INTO v_own
      FROM tokens t WHERE t.current_user_id = p_user FOR UPDATE;
    -- the clock is read after each lock: a lease another transaction committed
    -- while we waited must not end before it started
    v_now := coalesce(p_now, clock_timestamp());
    IF FOUND THEN
        IF v_own.expires_at > v_now THEN
            RETURN QUERY
                SELECT v_own.id, v_own.activated_at, v_own.expires_at, 'existing'::text, v_own.lease_id;
            RETURN;
        END IF;
        UPDATE token_usages u SET ended_at = v_own.expires_at, end_reason = 'expired'
         WHERE u.token_id = v_own.id AND u.ended_at IS NULL;
        UPDATE tokens t SET current_user_id = NULL, lease_id = NULL, released_at = v_own.expires_at
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

    v_lease := gen_random_uuid();
    UPDATE tokens t
       SET current_user_id = p_user, lease_id = v_lease, activated_at = v_now, expires_at = v_now + p_lifetime
     WHERE t.id = v_cand.id;
    INSERT INTO token_usages (token_id, user_id, started_at, lease_id)
    VALUES (v_cand.id, p_user, v_now, v_lease);
    RETURN QUERY SELECT v_cand.id, v_now, v_now + p_lifetime, v_outcome, v_lease;
END
$$;
"""


# The two rules, named as the models name them. PostgreSQL gets them as CHECK
# constraints. SQLite cannot add a constraint to an existing table without
# rebuilding it, and rebuilding `tokens` (dropping the old copy) would
# cascade-delete every usage row (foreign keys are on and cannot be turned
# off inside the migration's transaction), so there a pair of triggers per
# table refuses the same rows.
# `{row}` is empty in a constraint and `NEW.` in a trigger.
CHECKS = {
    "tokens": (
        "ck_tokens_holder_has_lease_id",
        "{row}current_user_id IS NULL OR {row}lease_id IS NOT NULL",
    ),
    "token_usages": (
        "ck_token_usages_open_has_lease_id",
        "{row}ended_at IS NOT NULL OR {row}lease_id IS NOT NULL",
    ),
}


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _give_open_leases_ids() -> None:
    """Every held token and every open usage gets a lease id; a usage shares its token's."""
    if _is_postgres():
        op.execute("UPDATE tokens SET lease_id = gen_random_uuid() WHERE current_user_id IS NOT NULL")
        op.execute(
            "UPDATE token_usages u SET lease_id = coalesce("
            "(SELECT t.lease_id FROM tokens t WHERE t.id = u.token_id), gen_random_uuid())"
            " WHERE u.ended_at IS NULL"
        )
        return

    # SQLite (the embedded default, small pools): ids from Python's CSPRNG
    def table(name, *columns):
        return sa.table(name, *columns, sa.column("lease_id", sa.Uuid()))

    tokens = table("tokens", sa.column("id", sa.Uuid()), sa.column("current_user_id"))
    usages = table("token_usages", sa.column("token_id", sa.Uuid()), sa.column("ended_at"))
    bind = op.get_bind()
    held = bind.execute(sa.select(tokens.c.id).where(tokens.c.current_user_id.is_not(None))).scalars()
    opened = bind.execute(sa.select(usages.c.token_id).where(usages.c.ended_at.is_(None))).scalars()
    for token_id in set(held) | set(opened):
        lease_id = uuid.uuid4()
        held_token = (tokens.c.id == token_id) & tokens.c.current_user_id.is_not(None)
        bind.execute(sa.update(tokens).where(held_token).values(lease_id=lease_id))
        open_usage = (usages.c.token_id == token_id) & usages.c.ended_at.is_(None)
        bind.execute(sa.update(usages).where(open_usage).values(lease_id=lease_id))


def _sqlite_triggers(table: str) -> dict[str, str]:
    name, rule = CHECKS[table]
    return {
        f"{name}_{when}": f"CREATE TRIGGER {name}_{when} BEFORE {when.upper()} ON {table}"
        f" WHEN NOT ({rule.format(row='NEW.')})"
        f" BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END"
        for when in ("insert", "update")
    }


def upgrade():
    for table in CHECKS:
        op.add_column(table, sa.Column("lease_id", sa.Uuid(), nullable=True))
    _give_open_leases_ids()
    for table, (name, rule) in CHECKS.items():
        if _is_postgres():
            op.create_check_constraint(op.f(name), table, rule.format(row=""))
        else:
            for sql in _sqlite_triggers(table).values():
                op.execute(sql)
    if _is_postgres():
        op.execute(f"DROP FUNCTION {ACTIVATE_SIGNATURE}")
        op.execute(ACTIVATE_FUNCTION)


def _previous_activate_function() -> str:
    """Revision 0001's function text (one copy of it, read from that file)."""
    path = Path(__file__).with_name("0001_token_pool.py")
    spec = importlib.util.spec_from_file_location("tokenpool_migration_0001", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ACTIVATE_FUNCTION


def downgrade():
    if _is_postgres():
        op.execute(f"DROP FUNCTION {ACTIVATE_SIGNATURE}")
        op.execute(_previous_activate_function())
    for table, (name, _rule) in CHECKS.items():
        if _is_postgres():
            op.drop_constraint(op.f(name), table, type_="check")
            op.drop_column(table, "lease_id")
        else:  # no rebuild (see CHECKS): SQLite drops a plain column in place
            for trigger in _sqlite_triggers(table):
                op.execute(f"DROP TRIGGER {trigger}")
            op.execute(f"ALTER TABLE {table} DROP COLUMN lease_id")
