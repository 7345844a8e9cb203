"""The `queue` policy: tickets, first in first out, hand-over on release, clear and expiry."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from service.db import run_transaction
from service.extensions import db
from service.state import app_state
from service.tokens import queue
from service.tokens.sweeper import run_hand_over
from tests.conftest import make_app
from tests.helpers import assert_error, proof, user
from tests.observability.test_metrics import sample
from tests.pools.test_pools import make_pool, take
from tests.tokens.test_sweeper import wait_for_a_sweep

OUTCOMES = ("queued", "granted", "cancelled", "expired")
AFTER = ("release", "expiry")


def queue_pool(client, name="q", size=1, lifetime=60, **settings):
    return make_pool(client, name, size=size, lifetime=lifetime, policy="queue", **settings).get_json()


def statuses(client, tickets):
    return [client.get(ticket_url(t)).get_json()["status"] for t in tickets]


def ticket_url(t):
    return f"/api/pools/{t['pool']}/tickets/{t['ticket_id']}"


def release(client, pool, lease):
    return client.post(f"/api/pools/{pool}/tokens/{lease['token_id']}/release", json=proof(lease))


def test_a_full_queue_pool_answers_202_with_a_waiting_ticket(client, clock):
    queue_pool(client, max_wait_seconds=30)
    take(client, "q", user())
    u = user()
    r = take(client, "q", u)
    assert r.status_code == 202, r.get_json()
    t = r.get_json()
    assert r.headers["Location"] == ticket_url(t)
    assert t["status"] == "waiting" and t["position"] == 1 and t["pool"] == "q" and t["user_id"] == u
    assert t["queued_at"] == "2030-01-01T12:00:00.000Z" or t["queued_at"].startswith("2030-01-01T12:00:00")
    assert set(t) == {"ticket_id", "pool", "user_id", "status", "position", "queued_at", "expires_at"}
    again = take(client, "q", u)
    assert again.status_code == 202 and again.get_json() == t  # asking again: the same ticket
    second = take(client, "q", user()).get_json()
    assert second["position"] == 2
    assert client.get(ticket_url(t)).get_json() == t
    assert client.get("/api/pools/q").get_json()["queued"] == 2


def test_release_hands_the_token_to_the_oldest_ticket_in_order(client, clock):
    queue_pool(client)
    held = take(client, "q", user()).get_json()
    waiting = []
    for _ in range(3):
        clock.advance(1)
        waiting.append(take(client, "q", user()).get_json())
    clock.advance(1)
    released = release(client, "q", held)
    assert released.status_code == 200 and released.get_json()["state"] == "available"
    first = client.get(ticket_url(waiting[0])).get_json()
    assert first["status"] == "granted" and first["token_id"] == held["token_id"]
    assert first["fencing_token"] > held["fencing_token"] and "lease_id" not in first
    assert first["activated_at"].startswith("2030-01-01T12:00:04")  # the lease starts at the grant
    assert client.get(ticket_url(waiting[1])).get_json()["position"] == 1
    # the ticket's user (user_id in the query) and admins see the lease_id; with it the lease is theirs
    mine = client.get(ticket_url(waiting[0]), query_string={"user_id": first["user_id"]}).get_json()
    assert "lease_id" in mine
    others = client.get(ticket_url(waiting[0]), query_string={"user_id": user()}).get_json()
    assert "lease_id" not in others
    assert release(client, "q", mine).status_code == 200
    assert client.get(ticket_url(waiting[1])).get_json()["status"] == "granted"
    assert client.get(ticket_url(waiting[2])).get_json()["position"] == 1


def test_a_granted_ticket_has_its_usage_row(client):
    queue_pool(client)
    held = take(client, "q", user()).get_json()
    t = take(client, "q", user()).get_json()
    release(client, "q", held)
    granted = client.get(ticket_url(t)).get_json()
    usages = client.get(f"/api/pools/q/tokens/{held['token_id']}/usages").get_json()["usages"]
    assert (usages[0]["user_id"], usages[0]["end_reason"]) == (t["user_id"], None)
    assert usages[0]["fencing_token"] == granted["fencing_token"]
    assert usages[1]["end_reason"] == "released"


def test_clear_hands_every_token_to_the_queue(client):
    queue_pool(client, size=2)
    for _ in range(2):
        take(client, "q", user())
    tickets = [take(client, "q", user()).get_json() for _ in range(3)]
    cleared = client.delete("/api/pools/q/tokens/active").get_json()
    assert cleared["cleared_count"] == 2
    assert statuses(client, tickets) == ["granted", "granted", "waiting"]


def test_an_expired_lease_goes_to_the_head_not_to_a_newcomer(client, clock):
    queue_pool(client, lifetime=10)
    held = take(client, "q", user()).get_json()
    t = take(client, "q", user()).get_json()
    clock.advance(10)  # the lease has ended; the scheduler has not run yet
    late = take(client, "q", user())
    assert late.status_code == 202 and late.get_json()["position"] == 1  # behind the head, who got it
    granted = client.get(ticket_url(t)).get_json()
    assert granted["status"] == "granted" and granted["token_id"] == held["token_id"]


def test_an_idle_scheduler_waits_for_no_lock_on_tokens(client, app, is_postgres):
    """With no ticket waiting the scheduler (which looks every second) reads the tickets alone,
    so a lock on `tokens` (a migration, a shrink) never queues it."""
    if not is_postgres:
        pytest.skip("SQLite has no table locks to wait for")
    with app.app_context(), db.engine.connect() as holder:
        holder.execute(text("LOCK TABLE tokens, pools IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        assert run_hand_over(app, budget_seconds=2.0) is None
        assert time.monotonic() - started < 1.0
        holder.rollback()


def test_the_scheduler_hands_an_expired_lease_to_the_head(client, clock, app):
    queue_pool(client, lifetime=10)
    held = take(client, "q", user()).get_json()
    clock.advance(1)
    t = take(client, "q", user()).get_json()
    with app.app_context():
        assert run_transaction(queue.next_due).isoformat().startswith("2030-01-01T12:00:10")
        assert run_transaction(queue.hand_over_due, now=clock()) == ([], {})  # nothing due yet
    clock.advance(9.2)
    with app.app_context():
        grants, _expired = run_transaction(queue.hand_over_due, now=clock())
    assert [str(g.ticket_id) for g in grants] == [t["ticket_id"]]
    assert (grants[0].activated_at - grants[0].freed_at).total_seconds() == 0.2  # the hand-over delay
    granted = client.get(ticket_url(t)).get_json()
    assert granted["status"] == "granted" and granted["token_id"] == held["token_id"]
    usages = client.get(f"/api/pools/q/tokens/{held['token_id']}/usages").get_json()["usages"]
    assert usages[1]["end_reason"] == "expired" and usages[1]["ended_at"] == held["expires_at"]


def test_the_sweep_hands_expired_leases_over(client, clock, app):
    from service.tokens import service

    queue_pool(client, lifetime=10)
    take(client, "q", user())
    t = take(client, "q", user()).get_json()
    clock.advance(11)
    with app.app_context():
        run_transaction(service.sweep, now=clock())
    assert client.get(ticket_url(t)).get_json()["status"] == "granted"


def test_a_ticket_expires_after_max_wait_seconds(client, clock, app):
    queue_pool(client, lifetime=600, max_wait_seconds=30)
    held = take(client, "q", user()).get_json()
    t = take(client, "q", user()).get_json()
    assert t["expires_at"].startswith("2030-01-01T12:00:30")
    clock.advance(30)
    assert client.get(ticket_url(t)).get_json()["status"] == "expired"
    with app.app_context():
        _grants, expired = run_transaction(queue.hand_over_due, now=clock())
    assert expired == {"q": 1}
    release(client, "q", held)  # nobody waits any more: the token stays free
    assert client.get(ticket_url(t)).get_json()["status"] == "expired"
    assert client.get("/api/pools/q").get_json()["available"] == 1


def test_cancel_by_its_user_or_an_admin(client):
    queue_pool(client)
    take(client, "q", user())
    t = take(client, "q", user()).get_json()
    other = take(client, "q", user()).get_json()
    assert_error(client.delete(ticket_url(t), json={"user_id": user()}), 403, "FORBIDDEN")
    r = client.delete(ticket_url(t), json={"user_id": t["user_id"]})
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert client.get(ticket_url(other)).get_json()["position"] == 1
    assert_error(client.delete(ticket_url(t), json={"user_id": t["user_id"]}), 409, "CONFLICT")
    assert client.delete(ticket_url(other)).get_json()["status"] == "cancelled"  # open mode: admin
    assert client.get("/api/pools/q").get_json()["queued"] == 0


def test_a_full_queue_answers_409_queue_full_with_retry_after(client, clock):
    queue_pool(client, lifetime=20, max_queue=2)
    take(client, "q", user())
    clock.advance(5)
    for _ in range(2):
        assert take(client, "q", user()).status_code == 202
    r = take(client, "q", user())
    body = assert_error(r, 409, "QUEUE_FULL")
    assert r.headers["Retry-After"] == "15"  # the lease ends in 15 s, and its token goes to the head
    assert body["details"] == {"pool": "q", "retry_after": 15, "max_queue": 2}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tokenpool_activations_total{pool="q",reason="queue_full",result="failure"} 1.0' in metrics


def test_unknown_and_malformed_tickets(client):
    queue_pool(client)
    assert_error(client.get(f"/api/pools/q/tickets/{user()}"), 404, "NOT_FOUND", "Ticket not found")
    assert_error(client.get("/api/pools/q/tickets/nope"), 400, "VALIDATION_ERROR")
    assert_error(client.get(f"/api/pools/nope/tickets/{user()}"), 404, "NOT_FOUND", "Pool not found")
    assert_error(client.get(f"/api/pools/q/tickets/{user()}?user_id=x"), 400, "VALIDATION_ERROR")


def test_growing_hands_new_tokens_over_and_leaving_the_policy_cancels(client):
    queue_pool(client)
    take(client, "q", user())
    tickets = [take(client, "q", user()).get_json() for _ in range(3)]
    assert client.patch("/api/pools/q", json={"size": 2}).status_code == 200
    assert statuses(client, tickets) == ["granted", "waiting", "waiting"]
    assert client.patch("/api/pools/q", json={"policy": "reject"}).status_code == 200
    assert statuses(client, tickets[1:]) == ["cancelled"] * 2


def test_delete_refuses_while_tickets_wait_unless_forced(client):
    queue_pool(client)
    held = take(client, "q", user()).get_json()
    take(client, "q", user())
    release(client, "q", held)  # the ticket holds the token now; one more waits
    take(client, "q", user())
    assert_error(client.delete("/api/pools/q"), 409, "CONFLICT")
    assert client.delete("/api/pools/q?force=true").status_code == 204


def test_fencing_tokens_grow_in_queue_order(client, clock, app):
    queue_pool(client, size=2, lifetime=5)
    for _ in range(2):
        take(client, "q", user())
    tickets = [take(client, "q", user()).get_json() for _ in range(6)]
    for _ in range(3):
        clock.advance(5)
        with app.app_context():
            run_transaction(queue.hand_over_due, now=clock())
    seen = [client.get(ticket_url(t)).get_json() for t in tickets]
    assert [s["status"] for s in seen] == ["granted"] * 6
    fences = [s["fencing_token"] for s in seen]
    assert fences == sorted(fences) and len(set(fences)) == 6


@pytest.mark.options(TOKEN_CLOCK=None, SWEEPER_ENABLED=True, CHECK_INTERVAL_SECONDS=30)
def test_the_sweeper_thread_hands_an_expiry_over_within_a_second(client, app):
    """Real time: a 1 s lease in a queue pool; the scheduler wakes for its end, not the 30 s sweep."""
    queue_pool(client, lifetime=1)
    held = take(client, "q", user()).get_json()
    t = take(client, "q", user()).get_json()
    deadline = time.monotonic() + 5
    while client.get(ticket_url(t)).get_json()["status"] == "waiting":
        assert time.monotonic() < deadline, "not handed over within 4 s of the lease's end"
        time.sleep(0.05)
    usages = client.get(f"/api/pools/q/tokens/{held['token_id']}/usages").get_json()["usages"]
    ended, started = (datetime.fromisoformat(usages[i][k]) for i, k in ((1, "ended_at"), (0, "started_at")))
    assert usages[1]["end_reason"] == "expired"
    assert timedelta(0) <= started - ended <= timedelta(seconds=1)


@pytest.mark.options(TOKEN_CLOCK=None)
def test_a_ticket_whose_process_has_no_scheduler_is_served_by_another(client, app, database_url):
    """Real time: this app queues with no scheduler of its own (a process that died after queuing);
    another process's scheduler, idle because it knew of no ticket, finds it within a second."""
    other = make_app(database_url, SWEEPER_ENABLED=True, CHECK_INTERVAL_SECONDS=30)
    sweeper = app_state(other).sweeper
    sweeper.start()
    try:
        wait_for_a_sweep(other)
        time.sleep(0.2)  # past its first hand-over: it now waits for its next sweep, 15-30 s away
        queue_pool(client, lifetime=1)
        take(client, "q", user())
        t = take(client, "q", user()).get_json()
        deadline = time.monotonic() + 3.5  # the lease's 1 s, a second to notice, and slack
        while client.get(ticket_url(t)).get_json()["status"] == "waiting":
            assert time.monotonic() < deadline, "not handed over by the other process's scheduler"
            time.sleep(0.05)
    finally:
        sweeper.stop()


def test_queue_metrics_by_pool(client, clock, app):
    queue_pool(client, lifetime=10, max_wait_seconds=30)
    held = take(client, "q", user()).get_json()
    first = take(client, "q", user()).get_json()
    take(client, "q", first["user_id"])  # the same ticket again: queued once
    second = take(client, "q", user()).get_json()
    third = take(client, "q", user()).get_json()
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "tokenpool_queue_length", pool="q") == 3
    client.delete(ticket_url(third), json={"user_id": third["user_id"]})
    clock.advance(4)
    release(client, "q", held)  # to the first ticket, 4 s after it queued, at once
    clock.advance(10.25)  # the first's lease ends; the token manager hands it over 0.25 s later
    manager = threading.Thread(target=run_hand_over, args=(app,))  # as its thread: no request context
    manager.start()
    manager.join(10)
    assert client.get(ticket_url(second)).get_json()["status"] == "granted"
    text = client.get("/metrics").get_data(as_text=True)
    counts = {o: sample(text, "tokenpool_tickets_total", outcome=o, pool="q") for o in OUTCOMES}
    assert counts == {"queued": 3, "granted": 2, "cancelled": 1, "expired": 0}
    assert sample(text, "tokenpool_ticket_wait_seconds_count", pool="q") == 2
    assert sample(text, "tokenpool_ticket_wait_seconds_sum", pool="q") == 4 + 14.25
    delay = "tokenpool_queue_hand_over_delay_seconds_sum"
    delays = {a: sample(text, delay, after=a, pool="q") for a in AFTER}
    assert delays == {"release": 0.0, "expiry": 0.25}
    assert sample(text, "tokenpool_queue_length", pool="q") == 0
    # the first ticket's lease expired and was closed by the hand-over: an expiry like a sweep's
    assert sample(text, "tokenpool_releases_total", reason="expired", pool="q") == 1
    minutes = client.get("/api/monitoring/activity").get_json()["minutes"]
    totals = {series: sum(m[series] for m in minutes) for series in ("leases", "expiries", "rejections")}
    assert totals == {"leases": 3, "expiries": 1, "rejections": 0}  # an activation and two grants


def test_a_rollback_of_a_connection_lost_mid_transaction_keeps_the_real_error(app):
    """The grants' rollback listener must not read `info` of an invalidated connection: that
    raised PendingRollbackError over the driver's error (a stalled database answered 500)."""
    with app.app_context(), db.engine.connect() as conn:
        conn.begin()
        conn.execute(text("SELECT 1"))
        conn.info[queue.GRANTS_NOTED] = ["a grant of the lost transaction"]
        conn.invalidate()
        conn.rollback()  # raised PendingRollbackError from the listener
        assert queue.GRANTS_NOTED not in conn.info  # reconnected: the pool cleared it


def test_tickets_write_their_events_queued_granted_cancelled(client):
    queue_pool(client)
    held = take(client, "q", user()).get_json()
    served, left, dropped = (take(client, "q", user()).get_json() for _ in range(3))
    assert client.delete(ticket_url(dropped), json={"user_id": dropped["user_id"]}).status_code == 200
    release(client, "q", held)  # the token goes to `served`
    granted = client.get(ticket_url(served)).get_json()
    assert client.patch("/api/pools/q", json={"policy": "reject"}).status_code == 200  # `left` is cancelled
    events = client.get("/api/events?pool=q").get_json()["events"]
    seen = [(e["type"], e["user_id"], e["token_id"], e["fencing_token"]) for e in events]
    assert seen == [
        ("leased", held["user_id"], held["token_id"], held["fencing_token"]),
        ("queued", served["user_id"], None, None),
        ("queued", left["user_id"], None, None),
        ("queued", dropped["user_id"], None, None),
        ("cancelled", dropped["user_id"], None, None),
        ("released", held["user_id"], held["token_id"], held["fencing_token"]),
        ("leased", served["user_id"], held["token_id"], granted["fencing_token"]),
        ("granted", served["user_id"], held["token_id"], granted["fencing_token"]),
        ("cancelled", left["user_id"], None, None),
    ]
    assert all(e["pool"] == "q" for e in events)
