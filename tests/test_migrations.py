"""Migrations: up from nothing, down to base with data, up again; no drift from the models."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import Uuid, bindparam, insert, inspect, select, text

from service.extensions import db
from service.models import Token, TokenUsage
from tests.conftest import make_app
from tests.helpers import activate, release, user
from tests.invariants import assert_invariants
from tests.procs import free_port

tokens, usages = Token.__table__, TokenUsage.__table__


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


def test_revisions_form_one_line_numbered_as_their_files():
    """Two branches landing a migration each must not both take the next number: alembic
    would see two revisions of one id (or two heads) and upgrade only one of them."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(__file__).parent.parent / "migrations"))
    files = sorted(Path(script.versions).glob("[0-9]*.py"))
    revisions = [rev for rev in script.walk_revisions()]
    assert len(script.get_heads()) == 1
    assert len(revisions) == len(files)
    for rev in revisions:
        assert Path(rev.path).name.startswith(f"{rev.revision}_"), rev.path
        if rev.down_revision is not None:
            assert int(rev.down_revision) == int(rev.revision) - 1, rev.path


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


def test_tokens_are_vacuumed_and_analysed_after_a_fixed_number_of_changed_rows(postgres_url):
    app = make_app(postgres_url)

    def options():
        with db.engine.connect() as conn:
            sql = "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE relname = 'tokens'"
            return set(conn.execute(text(sql)).scalar())

    with app.app_context():
        upgrade()
        assert {
            "autovacuum_vacuum_scale_factor=0",
            "autovacuum_vacuum_threshold=2000",
            "autovacuum_analyze_scale_factor=0",
            "autovacuum_analyze_threshold=2000",
        } <= options()
        downgrade(revision="0011")
        assert not {o for o in options() if o.startswith("autovacuum_analyze")}
        downgrade(revision="0002")
        assert not {o for o in options() if o.startswith("autovacuum")}
        upgrade()
        db.engine.dispose()


def test_lease_ids_upgrade_gives_open_leases_one_and_downgrade_keeps_the_data(fresh_app):
    """0004 -> 0005 with a held, an expired-but-open and a free token; then back to 0004."""
    app, now = fresh_app, datetime.now(UTC)
    held, stale, free = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with app.app_context():
        upgrade(revision="0004")
        with db.engine.begin() as conn:
            for token, holder, start, ends in (
                (held, uuid.uuid4(), now, now + timedelta(seconds=120)),
                (stale, uuid.uuid4(), now - timedelta(seconds=300), now - timedelta(seconds=180)),
                (free, None, None, now - timedelta(seconds=60)),
            ):
                conn.execute(
                    insert(tokens).values(
                        id=token, current_user_id=holder, activated_at=start, expires_at=ends, created_at=now
                    )
                )
                if holder:
                    conn.execute(insert(usages).values(token_id=token, user_id=holder, started_at=start))
            ended = dict(token_id=free, user_id=uuid.uuid4(), started_at=now - timedelta(seconds=90))
            conn.execute(insert(usages).values(**ended, ended_at=ended["started_at"], end_reason="released"))
        upgrade()
        with db.engine.connect() as conn:
            on_tokens = dict(conn.execute(select(tokens.c.id, tokens.c.lease_id)).all())
            on_usages = conn.execute(select(usages.c.token_id, usages.c.ended_at, usages.c.lease_id)).all()
            assert_invariants(conn, 3)
        assert on_tokens[held] and on_tokens[stale] and on_tokens[held] != on_tokens[stale]
        assert on_tokens[free] is None
        assert {(u.token_id, u.lease_id) for u in on_usages if u.ended_at is None} == {
            (held, on_tokens[held]),
            (stale, on_tokens[stale]),
        }
        assert [u.lease_id for u in on_usages if u.ended_at is not None] == [None]
        assert_no_drift()

    client = app.test_client()  # the holder never got the id: an admin can still end the lease
    guess = {"user_id": "00000000-0000-4000-8000-000000000000", "lease_id": str(uuid.uuid4())}
    assert client.post(f"/api/tokens/{held}/release", json=guess).status_code == 409
    assert client.post(f"/api/tokens/{held}/release").status_code == 200
    lease = activate(client, user()).get_json()
    assert release(client, lease).status_code == 200

    with app.app_context():
        downgrade(revision="0004")
        with db.engine.connect() as conn:
            assert "lease_id" not in {c["name"] for c in inspect(conn).get_columns("tokens")}
            assert "lease_id" not in {c["name"] for c in inspect(conn).get_columns("token_usages")}
            assert conn.execute(text("SELECT count(*) FROM token_usages")).scalar() == 4
            assert conn.execute(text("SELECT count(*) FROM tokens")).scalar() == 3
        if db.engine.dialect.name == "postgresql":  # revision 0001's function again, four columns
            with db.engine.begin() as conn:
                row = conn.execute(
                    text("SELECT * FROM tokenpool_activate(:u, NULL, make_interval(secs => 120))"),
                    {"u": uuid.uuid4()},
                ).one()
            assert len(row) == 4
        else:  # the triggers went with the column: a row without lease_id is fine again
            with db.engine.begin() as conn:
                conn.execute(text("UPDATE tokens SET current_user_id = id, activated_at = expires_at"))


def test_migrations_run_on_database_direct_url_not_through_pgbouncer(postgres_url):
    """DB_PGBOUNCER: migrations use DATABASE_DIRECT_URL; DATABASE_URL (nothing listens) is untouched."""
    direct = make_app(postgres_url)

    def revision() -> str:
        with direct.app_context(), db.engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()

    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    app = make_app(nowhere, DB_PGBOUNCER=True, DATABASE_DIRECT_URL=postgres_url, DB_CONNECT_TIMEOUT=1)
    with direct.app_context():
        upgrade()
    head = revision()
    with app.app_context():
        downgrade(revision="-1")
        assert revision() != head
        upgrade()
    assert revision() == head


def test_migrations_through_pgbouncer_without_a_direct_url_are_refused(tmp_path):
    """A session lock taken through a transaction-pooling PgBouncer would stay behind in its pool."""
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres"
    app = make_app(nowhere, DB_PGBOUNCER=True)
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert "DB_PGBOUNCER=true" in result.output and "set DATABASE_DIRECT_URL" in result.output
    assert "Traceback" not in result.output and "connection" not in result.output.lower()


def test_pools_upgrade_keeps_every_lease_and_gives_open_ones_fencing_tokens(fresh_app):
    """0006 -> 0007 with a held, an expired-but-open and a free token and some history; then back."""
    app, now = fresh_app, datetime.now(UTC)
    held, stale, free = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with app.app_context():
        upgrade(revision="0006")
        with db.engine.begin() as conn:
            for token, holder, start, ends in (
                (held, uuid.uuid4(), now - timedelta(seconds=10), now + timedelta(seconds=110)),
                (stale, uuid.uuid4(), now - timedelta(seconds=300), now - timedelta(seconds=180)),
                (free, None, None, now - timedelta(seconds=60)),
            ):
                lease_id = uuid.uuid4() if holder else None
                conn.execute(
                    text(
                        "INSERT INTO tokens"
                        " (id, current_user_id, activated_at, expires_at, created_at, lease_id)"
                        " VALUES (:id, :holder, :start, :ends, :now, :lease)"
                    ).bindparams(sa_bind("id", token), sa_bind("holder", holder), sa_bind("lease", lease_id)),
                    {"start": start, "ends": ends, "now": now},
                )
                if holder:
                    conn.execute(
                        text(
                            "INSERT INTO token_usages (token_id, user_id, started_at, lease_id)"
                            " VALUES (:token, :holder, :start, :lease)"
                        ).bindparams(
                            sa_bind("token", token), sa_bind("holder", holder), sa_bind("lease", lease_id)
                        ),
                        {"start": start},
                    )
            conn.execute(
                text(
                    "INSERT INTO token_usages (token_id, user_id, started_at, ended_at, end_reason)"
                    " VALUES (:token, :user, :start, :start, 'released')"
                ).bindparams(sa_bind("token", free), sa_bind("user", uuid.uuid4())),
                {"start": now - timedelta(seconds=90)},
            )
            before_tokens = conn.execute(
                text("SELECT id, current_user_id, activated_at, expires_at, lease_id FROM tokens ORDER BY id")
            ).all()
            before_usages = conn.execute(
                text(
                    "SELECT id, token_id, user_id, started_at, ended_at, end_reason, lease_id"
                    " FROM token_usages ORDER BY id"
                )
            ).all()
        upgrade()
        with db.engine.connect() as conn:
            after_tokens = conn.execute(
                text("SELECT id, current_user_id, activated_at, expires_at, lease_id FROM tokens ORDER BY id")
            ).all()
            after_usages = conn.execute(
                text(
                    "SELECT id, token_id, user_id, started_at, ended_at, end_reason, lease_id"
                    " FROM token_usages ORDER BY id"
                )
            ).all()
            assert after_tokens == before_tokens and after_usages == before_usages  # nothing lost or changed
            fencing = dict(conn.execute(select(tokens.c.id, tokens.c.fencing_token)).all())
            assert (fencing[stale], fencing[held]) == (1, 2)  # in order of start
            assert conn.execute(text("SELECT name, size, fencing_token FROM pools")).all() == [
                ("default", 3, 2)
            ]
            assert set(conn.execute(text("SELECT pool_id FROM tokens")).scalars()) == {1}
            assert_invariants(conn, 3)
        assert_no_drift()

    client = app.test_client()
    lease = activate(client, user()).get_json()  # the expired lease's token, the pool's next fencing token
    assert (lease["token_id"], lease["fencing_token"]) == (str(stale), 3)
    assert (
        client.post("/api/pools", json={"name": "extra", "size": 1, "lifetime_seconds": 5}).status_code == 201
    )
    assert client.post("/api/pools/extra/tokens/activate", json={"user_id": user()}).status_code == 200

    with app.app_context():
        downgrade(revision="0006")
        with db.engine.connect() as conn:
            assert "pools" not in inspect(conn).get_table_names()
            assert "fencing_token" not in {c["name"] for c in inspect(conn).get_columns("token_usages")}
            assert conn.execute(text("SELECT count(*) FROM tokens")).scalar() == 3  # the extra pool's went
            assert conn.execute(text("SELECT count(*) FROM token_usages")).scalar() == 4
            assert_invariants_before_pools(conn)
        if db.engine.dialect.name == "postgresql":  # revision 0005's function again, five columns
            with db.engine.begin() as conn:
                row = conn.execute(
                    text("SELECT * FROM tokenpool_activate(:u, NULL, make_interval(secs => 120))"),
                    {"u": uuid.uuid4()},
                ).one()
            assert len(row) == 5


def sa_bind(name, value):
    """A bound UUID (or null) as the Uuid column type stores it on either database."""
    return bindparam(name, value, type_=Uuid())


def assert_invariants_before_pools(conn):
    held = conn.execute(
        text("SELECT count(*) FROM tokens t JOIN token_usages u ON u.token_id = t.id AND u.ended_at IS NULL")
    ).scalar()
    assert (
        held == conn.execute(text("SELECT count(*) FROM tokens WHERE current_user_id IS NOT NULL")).scalar()
    )


def test_at_revision_0007_events_still_name_their_pool(fresh_app):
    """0007 gives the usage triggers their pool; stepping down from 0008 must keep them."""
    app = fresh_app
    at = datetime(2026, 12, 1, tzinfo=UTC)
    token, holder = uuid.uuid4(), uuid.uuid4()
    with app.app_context():
        upgrade()
        downgrade(revision="0007")
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO pools (name, size, lifetime_seconds, policy, max_queue, max_wait_seconds,"
                    " fencing_token, created_at) VALUES ('named', 1, 60, 'evict', 10, 60, 1, :at)"
                ),
                {"at": at},
            )
            pool_id = conn.execute(text("SELECT id FROM pools WHERE name = 'named'")).scalar_one()
            conn.execute(insert(tokens).values(id=token, pool_id=pool_id, expires_at=at, created_at=at))
            conn.execute(
                insert(usages).values(
                    token_id=token, user_id=holder, started_at=at, lease_id=uuid.uuid4(), fencing_token=1
                )
            )
            events = conn.execute(text("SELECT type, pool, fencing_token FROM events")).all()
    assert [tuple(e) for e in events] == [("leased", "named", 1)]
