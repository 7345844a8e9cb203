"""Retention: old ended usages and old events go in small batches; open leases and the newest
event stay. The clock is the injected one: nothing sleeps."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from service.db import run_transaction
from service.events import outbox
from service.extensions import db
from service.retention import oldest_kept, run_prune
from service.tokens.sweeper import Sweeper
from tests.helpers import activate, release, user

HOUR = 3600


def counts(app) -> dict:
    with app.app_context(), db.engine.connect() as conn:
        return {
            "usages": conn.scalar(text("SELECT count(*) FROM token_usages")),
            "open": conn.scalar(text("SELECT count(*) FROM token_usages WHERE ended_at IS NULL")),
            "events": conn.scalar(text("SELECT count(*) FROM events")),
        }


def publish(app) -> None:
    with app.app_context():
        run_transaction(outbox.publish)


@pytest.mark.options(USAGE_RETENTION_DAYS=1, EVENT_RETENTION_HOURS=2)
def test_old_ended_usages_and_events_go_and_open_leases_stay(app, client, clock):
    for _ in range(3):
        release(client, activate(client, user()).get_json())
    held = activate(client, user()).get_json()  # open, and older than the cutoff below
    publish(app)
    clock.advance(3 * HOUR)
    release(client, activate(client, user()).get_json())  # recent: kept
    publish(app)
    before = counts(app)
    assert before == {"usages": 5, "open": 1, "events": 9}

    assert run_prune(app, now=clock()) == {
        "usages": 0,
        "tickets": 0,
        "events": 7,
    }  # events: 2 h; usages: 1 day
    assert counts(app) == {"usages": 5, "open": 1, "events": 2}
    clock.advance(25 * HOUR)
    assert run_prune(app, now=clock())["usages"] == 4
    after = counts(app)
    assert after["open"] == 1 and after["usages"] == 1  # the open lease's usage, however old
    usages = client.get(f"/api/tokens/{held['token_id']}/usages").get_json()["usages"]
    assert [u["ended_at"] for u in usages] == [None]  # not swept yet: still open, still kept
    events = client.get("/api/events").get_json()["events"]
    assert len(events) == 1  # the newest is always kept, so ids never go back


@pytest.mark.options(USAGE_RETENTION_DAYS=0, EVENT_RETENTION_HOURS=1)
def test_usage_retention_zero_keeps_every_usage(app, client, clock):
    release(client, activate(client, user()).get_json())
    clock.advance(10_000 * 24 * HOUR)
    assert run_prune(app, now=clock())["usages"] == 0
    assert counts(app)["usages"] == 1


@pytest.mark.options(USAGE_RETENTION_DAYS=1, EVENT_RETENTION_HOURS=1)
def test_a_prune_walks_in_batches_and_stops_at_the_cutoff(app, client, clock, monkeypatch):
    from service import retention

    for _ in range(5):
        release(client, activate(client, user()).get_json())
    activate(client, user())  # its lease expires long before the cutoff: deleted too
    clock.advance(2 * 24 * HOUR)
    for _ in range(5):  # after the cutoff: the walk stops at the first of these
        release(client, activate(client, user()).get_json())
    starts = []
    real = retention.prune_batch

    def spy(conn, table, before, *, start, batch):
        starts.append((table, start))
        return real(conn, table, before, start=start, batch=batch)

    monkeypatch.setattr(retention, "prune_batch", spy)
    with app.app_context():
        done = retention.prune(retention.cutoffs(app.config, clock()), batch=2)
    assert done["usages"] == 6
    usage_starts = [start for table, start in starts if table == "usages"]
    assert len(usage_starts) == 4 and usage_starts == sorted(set(usage_starts))  # 2 + 2 + 2, then the stop
    assert counts(app)["usages"] == 5


@pytest.mark.options(USAGE_RETENTION_DAYS=1, EVENT_RETENTION_HOURS=1)
def test_prune_dry_run_counts_and_deletes_nothing(app, client, clock):
    for _ in range(2):
        release(client, activate(client, user()).get_json())
    publish(app)
    clock.advance(2 * 24 * HOUR)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["tokens", "prune", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "usages: 2 older than" in result.output and "events: 3 older than" in result.output
    assert re.search(r"older than \d{4}-\d\d-\d\dT[\d:.]+Z would be deleted", result.output), result.output
    assert counts(app) == {"usages": 2, "open": 0, "events": 4}
    result = runner.invoke(args=["tokens", "prune"])
    assert result.exit_code == 0 and "pruned: 2 usages, 0 tickets, 3 events" in result.output
    assert counts(app) == {"usages": 0, "open": 0, "events": 1}


@pytest.mark.options(USAGE_RETENTION_DAYS=1, EVENT_RETENTION_HOURS=1, SWEEPER_ENABLED=True)
def test_the_sweeper_prunes_after_its_sweep_and_the_oldest_row_is_reported(app, client, clock):
    release(client, activate(client, user()).get_json())
    clock.advance(2 * 24 * HOUR)
    recent = activate(client, user()).get_json()
    sweeper = Sweeper(app)
    sweeper._housekeeping(clock())
    assert counts(app) == {"usages": 1, "open": 1, "events": 1}
    with app.app_context(), db.engine.connect() as conn:
        kept = oldest_kept(conn)
    assert kept["usages"].isoformat().startswith(recent["activated_at"][:19])
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tokenpool_retention_oldest_timestamp_seconds{table="usages"}' in metrics


@pytest.mark.options(USAGE_RETENTION_DAYS=1, MAX_ACTIVE_TOKENS=1)
def test_usage_count_counts_every_lease_of_all_time_after_a_prune(app, client, clock):
    for _ in range(3):
        lease = activate(client, user()).get_json()
        release(client, lease)
    clock.advance(2 * 24 * HOUR)
    activate(client, user())
    assert run_prune(app, now=clock())["usages"] == 3
    token = client.get(f"/api/tokens/{lease['token_id']}").get_json()
    assert token["usage_count"] == 4
    assert len(client.get(f"/api/tokens/{lease['token_id']}/usages").get_json()["usages"]) == 1


@pytest.mark.options(USAGE_RETENTION_DAYS=1, EVENT_RETENTION_HOURS=1)
def test_settled_tickets_go_with_the_usages_and_waiting_ones_stay(app, client, clock):
    pool = {"name": "q", "size": 1, "lifetime_seconds": 60, "policy": "queue", "max_wait_seconds": 86400}
    assert client.post("/api/pools", json=pool).status_code == 201
    take = lambda: client.post("/api/pools/q/tokens/activate", json={"user_id": user()}).get_json()  # noqa: E731
    held, dropped, served, waiting = take(), take(), take(), take()
    assert client.delete(f"/api/pools/q/tickets/{dropped['ticket_id']}").status_code == 200
    proof = {"user_id": held["user_id"], "lease_id": held["lease_id"]}
    assert client.post(f"/api/pools/q/tokens/{held['token_id']}/release", json=proof).status_code == 200
    clock.advance(2 * 24 * HOUR)
    assert run_prune(app)["tickets"] == 2  # the cancelled one and the granted one
    with app.app_context(), db.engine.connect() as conn:
        kept = conn.execute(text("SELECT status FROM tickets")).scalars().all()
    assert kept == ["waiting"]  # not settled yet (that happens when its queue is next touched): kept
    assert served["status"] == waiting["status"] == "waiting"
