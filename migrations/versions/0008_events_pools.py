"""Events carry their token's pool and their lease's fencing token (pools exist since 0007).

The triggers of revision 0006 wrote every event as the `default` pool's, with
no fencing token; they now read the pool's name through the token and the
fencing token from the usage row.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

PG_FUNCTIONS = """
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

SQLITE_TRIGGERS = (
    """CREATE TRIGGER tokenpool_usage_started AFTER INSERT ON token_usages BEGIN
        INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
        SELECT 'leased', p.name, NEW.token_id, NEW.user_id, NEW.fencing_token, NEW.started_at
          FROM tokens t JOIN pools p ON p.id = t.pool_id WHERE t.id = NEW.token_id;
        UPDATE tokens SET usage_count = usage_count + 1 WHERE id = NEW.token_id;
    END""",
    """CREATE TRIGGER tokenpool_usage_ended AFTER UPDATE OF ended_at ON token_usages
    WHEN OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL BEGIN
        INSERT INTO events (type, pool, token_id, user_id, fencing_token, at)
        SELECT NEW.end_reason, p.name, NEW.token_id, NEW.user_id, NEW.fencing_token, NEW.ended_at
          FROM tokens t JOIN pools p ON p.id = t.pool_id WHERE t.id = NEW.token_id;
    END""",
)


def _previous():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0006_events.py")
    spec = importlib.util.spec_from_file_location("tokenpool_migration_0006", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _replace_sqlite(triggers) -> None:
    op.execute("DROP TRIGGER tokenpool_usage_ended")
    op.execute("DROP TRIGGER tokenpool_usage_started")
    for sql in triggers:
        op.execute(sql)


def upgrade():
    if _is_postgres():
        op.execute(PG_FUNCTIONS)
    else:
        _replace_sqlite(SQLITE_TRIGGERS)


def downgrade():
    previous = _previous()
    if _is_postgres():  # the functions of 0006 again (the triggers stay)
        functions = previous.PG_TRIGGERS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
        op.execute(";\n".join(part for part in functions.split(";\n") if "CREATE TRIGGER" not in part))
    else:
        _replace_sqlite(previous.SQLITE_TRIGGERS)
