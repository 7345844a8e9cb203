"""The token manager: exact expiry closing, idempotence, concurrent runners, the CLI."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from service.db import run_transaction
from service.extensions import db
from service.state import app_state
from service.tokens import service
from service.tokens.sweeper import Sweeper, run_sweep
from tests.conftest import make_app, reset_database
from tests.helpers import POOL, activate, user
from tests.invariants import assert_invariants
from tests.procs import wait_for


def wait_for_a_sweep(app, timeout: float = 5) -> None:
    """Until the sweeper state records a sweep; TimeoutError after `timeout` seconds."""
    with app.app_context():
        wait_for(lambda: run_transaction(service.last_sweep_at) is not None, timeout, what="a sweep")


def usages_of(client, token_id):
    return client.get(f"/api/tokens/{token_id}/usages").get_json()["usages"]


def test_sweep_closes_expired_leases_at_their_true_end(app, client, clock):
    leases = [activate(client, user()).get_json() for _ in range(3)]
    clock.advance(1000)
    result = run_sweep(app)
    assert result.ran and result.expired == 3
    for lease in leases:
        last = usages_of(client, lease["token_id"])[0]
        assert last["end_reason"] == "expired"
        assert last["ended_at"] == lease["expires_at"]
    assert run_sweep(app).expired == 0  # idempotent


def test_sweep_leaves_active_leases_alone(app, client, clock):
    lease = activate(client, user()).get_json()
    clock.advance(119)
    assert run_sweep(app).expired == 0
    assert usages_of(client, lease["token_id"])[0]["ended_at"] is None


def test_sweep_records_its_last_run(app, clock):
    with app.app_context():
        assert run_transaction(service.last_sweep_at) is None
        run_sweep(app)
        assert run_transaction(service.last_sweep_at) == clock.now


def test_a_runner_skips_when_another_swept_moments_ago(app, clock):
    assert run_sweep(app, min_gap_seconds=15).ran
    clock.advance(5)
    assert not run_sweep(app, min_gap_seconds=15).ran
    clock.advance(11)
    assert run_sweep(app, min_gap_seconds=15).ran


@pytest.mark.concurrency
def test_two_concurrent_runners_close_each_lease_once(database_url):
    app = make_app(database_url, MAX_ACTIVE_TOKENS=60, TOKEN_LIFETIME_SECONDS=1)
    reset_database(app, 60)
    client = app.test_client()
    for _ in range(60):
        activate(client, user())
    with app.app_context(), db.engine.begin() as conn:  # every lease ended a minute ago
        conn.execute(text("UPDATE tokens SET expires_at = activated_at"))
    results, barrier = [], threading.Barrier(2)

    def runner():
        barrier.wait()
        results.append(run_sweep(app))

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r.expired for r in results) == 60
    with app.app_context(), db.engine.connect() as conn:
        assert_invariants(conn, 60)
        assert (
            conn.execute(text("SELECT count(*) FROM token_usages WHERE end_reason = 'expired'")).scalar()
            == 60
        )
        assert (
            conn.execute(text("SELECT count(*) FROM tokens WHERE current_user_id IS NOT NULL")).scalar() == 0
        )
    with app.app_context():
        db.engine.dispose()


def test_background_sweeper_runs_and_stops(database_url):
    app = make_app(database_url, CHECK_INTERVAL_SECONDS=1, SWEEPER_ENABLED=True)
    reset_database(app)
    sweeper = app_state(app).sweeper
    sweeper.interval = 0.05
    app.test_client().get("/healthz")  # the first request starts it
    assert sweeper.running
    wait_for_a_sweep(app)
    sweeper.stop()
    assert not sweeper.running
    with app.app_context():
        db.engine.dispose()


def test_the_sweeper_sweeps_at_once_when_it_starts(database_url):
    """The first sweep does not wait an interval: /health knows the token manager at start."""
    app = make_app(database_url, CHECK_INTERVAL_SECONDS=3600, SWEEPER_ENABLED=True)
    reset_database(app)
    sweeper = app_state(app).sweeper
    sweeper.start()
    assert sweeper.running
    try:
        wait_for_a_sweep(app)  # within 5 s, not the interval's hour
    finally:
        sweeper.stop()


def test_sweeper_not_started_by_cli_or_when_disabled(app):
    assert app_state(app).sweeper is None
    enabled = make_app(app.config["SQLALCHEMY_DATABASE_URI"], SWEEPER_ENABLED=True)
    assert not app_state(enabled).sweeper.running
    assert isinstance(app_state(enabled).sweeper, Sweeper)


def test_cli_sweep(app, client, clock):
    activate(client, user())
    clock.advance(500)
    result = app.test_cli_runner().invoke(args=["tokens", "sweep"])
    assert result.exit_code == 0, result.output
    assert "1 expired" in result.output


def test_cli_seed_is_idempotent_and_tops_up(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["tokens", "seed"])
    assert result.exit_code == 0 and f"pool size {POOL}: 0 tokens added" in result.output
    result = runner.invoke(args=["tokens", "seed", "--size", str(POOL + 3)])
    assert result.exit_code == 0 and result.output == f"pool size {POOL + 3}: 3 tokens added\n"  # one line
    client = app.test_client()
    assert client.get("/api/tokens/summary").get_json()["total"] == POOL + 3
    for bad in ("0", "-3", "x"):  # a usage error, not a silent default
        result = runner.invoke(args=["tokens", "seed", "--size", bad])
        assert result.exit_code == 2 and "--size" in result.output, result.output
    result = runner.invoke(args=["tokens", "seed", "--size", "2"])  # never deletes
    assert result.output == f"pool size {POOL + 3}: 0 tokens added\n"  # the pool's size, not the asked one
    assert client.get("/api/tokens/summary").get_json()["total"] == POOL + 3


def test_a_failed_sweep_is_an_expiration_failure_too(tmp_path):
    app = make_app("sqlite:///" + str(tmp_path / "no" / "such" / "dir.sqlite3"))  # cannot be opened
    events = []
    app_state(app).telemetry.subscribe(events.append)
    with pytest.raises(OperationalError):
        run_sweep(app)
    failures = [(e.event, e.status, e.reason) for e in events]
    assert failures == [
        ("expiration", "failure", "database_error"),
        ("manager_check", "failure", "database_error"),
    ]
    text_ = app.test_client().get("/metrics").get_data(as_text=True)
    assert (
        'tokenpool_token_operation_failures_total{operation="expiration",reason="database_error"} 1.0'
        in text_
    )
