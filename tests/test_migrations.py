"""Migrations: up from nothing, down to base with data, up again; no drift from the models."""

from __future__ import annotations

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from service.extensions import db
from tests.conftest import make_app
from tests.helpers import activate, user


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_app(request, tmp_path):
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path / "m.sqlite3")
    else:
        url = request.getfixturevalue("postgres_url")
    app = make_app(url)
    with app.app_context():
        downgrade(revision="base")
    yield app
    with app.app_context():
        upgrade()  # leave the shared test database at head for the other tests
        db.engine.dispose()


def test_round_trip_with_data(fresh_app):
    app = fresh_app
    with app.app_context():
        upgrade()
        from service.db import run_transaction
        from service.tokens import service

        run_transaction(service.seed, 3)
    client = app.test_client()
    assert activate(client, user()).status_code == 200
    with app.app_context():
        downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
        assert {"tokens", "token_usages", "sweeper_state"} <= tables
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM sweeper_state")).scalar() == 1
        assert_no_drift()


def assert_no_drift():
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []


def test_tokens_are_vacuumed_after_a_fixed_number_of_dead_rows(postgres_url):
    app = make_app(postgres_url)

    def options():
        with db.engine.connect() as conn:
            sql = "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE relname = 'tokens'"
            return set(conn.execute(text(sql)).scalar())

    with app.app_context():
        upgrade()
        assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=2000"} <= options()
        downgrade(revision="0002")
        assert not {o for o in options() if o.startswith("autovacuum")}
        upgrade()
        db.engine.dispose()
