"""`flask database drop|shell`: the recovery tools `flask db` (Flask-Migrate) does not have.

`drop` removes everything the migrations made, even when a migration is broken
and `flask db downgrade base` cannot run; `shell` opens psql or sqlite3 on the
configured database. The make targets `migrate-drop` and `db-shell` call them.
"""

from __future__ import annotations

import os

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import text
from sqlalchemy.engine import make_url

from .config import mask_url
from .extensions import db

database_cli = AppGroup("database", help="Drop the schema, or open a SQL shell on DATABASE_URL.")

# relations, routines and types of the current schema, minus those an extension owns (its own DROP)
_PG_OBJECTS = """
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
UNION ALL
SELECT 'ROUTINE', p.oid::regprocedure::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, format('%I.%I', n.nspname, t.typname)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = current_schema() AND t.typtype IN ('e', 'd', 'r')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
"""


def drop_schema(conn) -> list[str]:
    """Drop every table (alembic_version included), view, sequence, function and type we own.

    PostgreSQL: the objects of the current schema (the schema itself stays, with its
    grants); SQLite: every table and view of the file. Returns "KIND name" per object
    dropped. Runs in the caller's transaction: on PostgreSQL it all goes or none does.
    """
    if conn.dialect.name == "postgresql":
        found = [(kind, name) for kind, name in conn.execute(text(_PG_OBJECTS))]
    else:
        rows = conn.execute(
            text(
                "SELECT upper(type), name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY type DESC"  # views before the tables they read
            )
        )
        found = [(kind, '"' + name.replace('"', '""') + '"') for kind, name in rows]
    cascade = " CASCADE" if conn.dialect.name == "postgresql" else ""
    for kind, name in found:
        # IF EXISTS: a CASCADE earlier in the list may already have taken it (an owned sequence)
        conn.execute(text(f"DROP {kind} IF EXISTS {name}{cascade}"))
    return [f"{kind} {name}" for kind, name in found]


@database_cli.command("drop")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def drop(yes):
    """Drop every table, function and type of the schema (never in production).

    For a development or test database that the migrations can no longer take
    down; `flask db upgrade` builds it again.
    """
    if current_app.config["APP_ENV"] == "production":
        raise click.ClickException("refusing to drop the schema in production (APP_ENV=production)")
    where = mask_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    if not yes:
        click.confirm(f"Drop every table of {where}?", abort=True)
    engine = db.engine
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            raw = conn.connection.driver_connection  # a PRAGMA outside any transaction, or it is ignored
            assert raw is not None  # an open connection
            raw.execute("PRAGMA foreign_keys=OFF")  # so the drop order does not matter
            with conn.begin():
                dropped = drop_schema(conn)
            raw.execute("PRAGMA foreign_keys=ON")
    else:
        with engine.begin() as conn:
            dropped = drop_schema(conn)
    engine.dispose()
    for name in dropped:
        click.echo(f"dropped {name}")
    click.echo(f"{where}: {len(dropped)} objects dropped; `flask db upgrade` rebuilds the schema")


def shell_command(url: str) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that open a SQL shell on `url` (SQLAlchemy form).

    PostgreSQL: psql with a libpq URI (the password goes in PGPASSWORD, never in
    argv, where `ps` shows it); SQLite: sqlite3 on the file. Raises ClickException
    for another database or an in-memory SQLite.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise click.ClickException("an in-memory SQLite database has no shell")
        return ["sqlite3", parsed.database], {}
    if backend == "postgresql":
        env = {"PGPASSWORD": parsed.password} if parsed.password else {}
        libpq = parsed._replace(drivername="postgresql", password=None)  # URL.set() ignores None
        return ["psql", libpq.render_as_string(hide_password=False)], env
    raise click.ClickException(f"no shell for {backend} databases")


@database_cli.command("shell", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def shell(args):
    """Open psql or sqlite3 on DATABASE_URL; extra ARGS go to the shell (after --)."""
    argv, env = shell_command(current_app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        os.execvpe(argv[0], argv + list(args), os.environ | env)
    except FileNotFoundError:
        raise click.ClickException(f"{argv[0]} is not installed") from None
