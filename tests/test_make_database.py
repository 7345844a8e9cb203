"""The make targets for migrations and the database, run as a developer runs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask_migrate import upgrade
from sqlalchemy import create_engine, inspect, text

from service.database_cli import shell_command
from tests.conftest import make_app, temporary_database

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def migrations() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return ScriptDirectory.from_config(config)


def make(target: str, database_url: str, *args: str, stdin: str | None = None, **env: str):
    """`make TARGET ARGS` with DATABASE_URL set; the venv is taken as it is (-o: never rebuilt here)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "APP_ENV"))}
    environ |= {"DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"} | env
    return subprocess.run(
        ["make", "-s", "-o", f"{VENV}/bin/activate", f"VENV={VENV}", target, *args],
        cwd=ROOT,
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_url(request, tmp_path):
    """A new database of either kind at the migrations' head."""
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path / "make.sqlite3")
        with make_app(url).app_context():
            upgrade()
        yield url
        return
    with temporary_database("tokenpool_make") as plain:
        url = plain.replace("postgresql://", "postgresql+psycopg://", 1)
        with make_app(url).app_context():
            upgrade()
        yield url


def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        engine.dispose()


def schema_objects(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            if conn.dialect.name == "postgresql":
                names |= set(
                    conn.scalars(
                        text(
                            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                            "WHERE n.nspname = current_schema()"
                        )
                    )
                )
            return names
    finally:
        engine.dispose()


def test_down_n_force_shell_and_drop(migrated_url):
    scripts = migrations()
    head = scripts.get_current_head()
    two_back = scripts.get_revision(scripts.get_revision(head).down_revision).down_revision

    r = make("migrate-down", migrated_url, "N=2")
    assert r.returncode == 0, r.stderr
    assert current_revision(migrated_url) == two_back

    # recovery: the tables are as `two_back` left them, but we declare the head applied
    r = make("migrate-force", migrated_url, f"V={head}")
    assert r.returncode == 0, r.stderr
    assert current_revision(migrated_url) == head

    r = make("db-shell", migrated_url, stdin="SELECT version_num FROM alembic_version;\n")
    assert r.returncode == 0, r.stderr
    assert head in r.stdout.split()

    r = make("migrate-drop", migrated_url, "YES=1")
    assert r.returncode == 0, r.stderr
    assert "alembic_version" in r.stdout
    assert schema_objects(migrated_url) == set()  # tables and the activation function alike
    assert current_revision(migrated_url) is None


def test_migrate_down_refuses_a_count_that_is_not_one_or_more(tmp_path):
    url = "sqlite:///" + str(tmp_path / "never.sqlite3")
    for bad in ("N=0", "N=-2", "N=two", "N="):
        r = make("migrate-down", url, bad)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "usage: make migrate-down N=" in r.stderr
    assert not (tmp_path / "never.sqlite3").exists()  # nothing ran


def test_migrate_force_needs_a_revision(tmp_path):
    r = make("migrate-force", "sqlite:///" + str(tmp_path / "never.sqlite3"))
    assert r.returncode == 2
    assert "usage: make migrate-force V=" in r.stderr


def test_migrate_drop_refuses_in_production(migrated_url):
    before = schema_objects(migrated_url)
    r = make("migrate-drop", migrated_url, "YES=1", APP_ENV="production", SECRET_KEY="x" * 32)
    assert r.returncode != 0
    assert "refusing to drop the schema in production (APP_ENV=production)" in r.stderr
    assert schema_objects(migrated_url) == before and "alembic_version" in before


def test_shell_command_keeps_the_password_out_of_argv():
    argv, env = shell_command("postgresql+psycopg://app:s3cret@db.internal:6432/tokenpool?sslmode=require")
    assert argv == ["psql", "postgresql://app@db.internal:6432/tokenpool?sslmode=require"]
    assert env == {"PGPASSWORD": "s3cret"}
    assert shell_command("sqlite:////var/lib/tokenpool/t.sqlite3") == (
        ["sqlite3", "/var/lib/tokenpool/t.sqlite3"],
        {},
    )
