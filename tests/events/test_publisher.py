"""The event publisher: a process numbers the events it writes within moments, without a reader,
a gap's worth at a time; the notice of new events comes from numbering, not from each commit."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from sqlalchemy import text

from service.db import run_transaction
from service.events import outbox, publisher
from service.state import app_state
from service.tokens import service
from tests.events.test_stream_processes import listening
from tests.helpers import activate, user
from tests.observability.test_metrics import sample
from tests.pools.test_pools import take
from tests.pools.test_queue import queue_pool
from tests.procs import wait_for

UNNUMBERED = text("SELECT count(*) FROM events WHERE event_id IS NULL")


def unnumbered(app) -> int:
    with app.app_context():
        return run_transaction(lambda conn: conn.scalar(UNNUMBERED))


def test_a_process_numbers_the_events_it_writes_without_a_reader_or_a_sweeper(app, client):
    assert app_state(app).sweeper is None  # nothing else numbers them here
    activate(client, user())  # the first request starts the publisher
    assert app_state(app).publisher.started
    wait_for(lambda: unnumbered(app) == 0, 5, what="ids for the activation's events")


def test_a_burst_of_lease_changes_is_numbered_a_gap_at_a_time(app, client, monkeypatch):
    calls = []
    real = outbox.publish_pending

    def counted(**kwargs):
        calls.append(time.monotonic())
        return real(**kwargs)

    monkeypatch.setattr(outbox, "publish_pending", counted)
    started = time.monotonic()
    for _ in range(60):
        activate(client, user())
    took = time.monotonic() - started
    wait_for(lambda: unnumbered(app) == 0, 5, what="ids for the burst")
    assert 1 <= len(calls) <= took / publisher.PUBLISH_GAP_SECONDS + 2, (len(calls), took)
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(gap >= publisher.PUBLISH_GAP_SECONDS * 0.9 for gap in gaps), gaps


def test_a_publisher_that_fails_tries_again(app, client, monkeypatch):
    failures = []
    real = outbox.publish_pending

    def flaky(**kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("the database went away")
        return real(**kwargs)

    monkeypatch.setattr(outbox, "publish_pending", flaky)
    monkeypatch.setattr(publisher, "RETRY_SECONDS", 0.05)
    activate(client, user())
    wait_for(lambda: unnumbered(app) == 0, 5, what="ids after a failed attempt")
    assert failures == [1]


def listener(app) -> psycopg.Connection:
    url = app.config["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg://", "postgresql://")
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"LISTEN {outbox.CHANNEL}")
    return conn


def notices(conn: psycopg.Connection, seconds: float) -> int:
    return sum(1 for _ in conn.notifies(timeout=seconds))


def test_a_lease_change_sends_no_notice_and_numbering_sends_one(app, clock, is_postgres):
    """Every commit that notifies waits for the others' commits (one lock through the WAL
    flush), so activations do not notify; the transaction that numbers their events does."""
    if not is_postgres:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    with listener(app) as heard, app.app_context():  # no request: no publisher runs here
        for _ in range(3):
            run_transaction(service.activate, uuid.UUID(user()), now=clock())
        assert notices(heard, 0.3) == 0
        assert run_transaction(outbox.publish) == 3
        assert notices(heard, 2) == 1
        assert run_transaction(outbox.publish) == 0  # nothing new: no notice
        assert notices(heard, 0.3) == 0


def test_pool_changes_that_write_events_wake_the_publisher(app, client):
    """Growing a queue pool grants a waiting ticket; a policy change cancels the rest (events written
    in the pool's transaction, no token event of the request); a forced deletion ends the leases (a
    `cleared` release, counted). Each is numbered without a reader."""
    queue_pool(client, "seats", size=1)
    take(client, "seats", user())
    for _ in range(2):
        assert client.post("/api/pools/seats/tokens/activate", json={"user_id": user()}).status_code == 202
    wait_for(lambda: unnumbered(app) == 0, 5, what="ids for the lease and the tickets")
    assert client.patch("/api/pools/seats", json={"size": 2}).status_code == 200  # grants the first
    wait_for(lambda: unnumbered(app) == 0, 5, what="ids for the granted ticket")
    assert client.patch("/api/pools/seats", json={"policy": "evict"}).status_code == 200  # cancels it
    wait_for(lambda: unnumbered(app) == 0, 5, what="an id for the cancelled ticket")
    assert client.delete("/api/pools/seats?force=true").status_code == 204
    wait_for(lambda: unnumbered(app) == 0, 5, what="ids for the cleared leases")
    kinds = [e["type"] for e in client.get("/api/events?pool=seats").get_json()["events"]]
    assert kinds == ["leased", "queued", "queued", "leased", "granted", "cancelled", "cleared", "cleared"]
    scrape = client.get("/metrics").get_data(as_text=True)
    assert sample(scrape, "tokenpool_releases_total", reason="cleared", pool="seats") == 2


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=5)  # no quiet interval while the test runs
def test_the_feed_reads_on_a_notice_without_numbering_itself(app, client, is_postgres, monkeypatch):
    """A notice says a publisher numbered new events: the feed's thread reads them and numbers
    nothing (its numbering transaction would notify every other feed, which would number and
    notify in turn: a chain of numbering transactions under load). Only its first read numbers."""
    if not is_postgres:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    numbering_reads = []
    real = outbox.publish_and_read

    def counted(conn, **kwargs):
        numbering_reads.append(threading.current_thread().name)
        return real(conn, **kwargs)

    monkeypatch.setattr(outbox, "publish_and_read", counted)
    feed = app_state(app).event_feed
    assert client.get("/api/events/stream").status_code == 200  # a short answer: the feed listens
    wait_for(lambda: listening(app.config["SQLALCHEMY_DATABASE_URI"]), 5, what="the feed listening")
    holders = [user() for _ in range(8)]
    for holder in holders:
        assert activate(client, holder).status_code == 200
        time.sleep(0.15)  # a notice each (the publisher numbers at most every 0.1 s)
    wait_for(
        lambda: {str(e["user_id"]) for e in feed.buffer} >= set(holders), 5, what="the leases in the feed"
    )
    assert numbering_reads.count("event-feed") == 1, numbering_reads
