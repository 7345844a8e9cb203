"""Events: every lease change writes its event in the same transaction; pages and streams read them.

On SQLite and PostgreSQL through the API; the ordering of ids against commit
order on PostgreSQL with two real connections.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import text

from service.db import run_transaction
from service.events import outbox
from service.events.stream import event_json, hung_up, sse
from service.extensions import db
from service.state import app_state
from service.tokens import service
from service.tokens.sweeper import run_sweep
from tests.helpers import activate, assert_error, release, renew, sse_messages, user
from tests.procs import wait_for


def page(client, **params) -> dict:
    response = client.get("/api/events", query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_every_lease_change_is_an_event_in_order(app, client, clock):
    first = activate(client, user()).get_json()
    renew(client, first)
    release(client, first)
    second = activate(client, user()).get_json()
    clock.advance(app.config["TOKEN_LIFETIME_SECONDS"] + 1)
    with app.app_context():
        run_sweep(app)
    third = activate(client, user()).get_json()
    assert client.delete("/api/tokens/active").status_code == 200

    events = page(client)["events"]
    assert kinds(events) == ["leased", "renewed", "released", "leased", "expired", "leased", "cleared"]
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all("lease_id" not in e for e in events)
    assert events[0]["token_id"] == first["token_id"] and events[0]["user_id"] == first["user_id"]
    assert events[0]["at"] == first["activated_at"] and events[0]["pool"] == "default"
    expired = events[4]
    assert expired["user_id"] == second["user_id"] and expired["at"] == second["expires_at"]
    assert events[6]["user_id"] == third["user_id"]


@pytest.mark.options(MAX_ACTIVE_TOKENS=1)
def test_an_eviction_is_evicted_then_leased(app, client):
    held = activate(client, user()).get_json()
    taker = activate(client, user()).get_json()
    events = page(client)["events"]
    assert kinds(events) == ["leased", "evicted", "leased"]
    assert events[1]["user_id"] == held["user_id"] and events[2]["user_id"] == taker["user_id"]


def test_a_rolled_back_change_leaves_no_event(app, client):
    def activate_then_fail(conn):
        service.activate(conn, uuid.uuid4(), lifetime=60)
        raise RuntimeError("rolled back")

    with app.app_context(), pytest.raises(RuntimeError):
        run_transaction(activate_then_fail)
    assert page(client)["events"] == []
    with app.app_context(), db.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM events")) == 0


def test_pages_follow_the_cursor(app, client):
    for _ in range(5):
        activate(client, user())
    first = page(client, limit=2)
    assert len(first["events"]) == 2
    second = page(client, limit=2, after=first["last_event_id"])
    rest = page(client, after=second["last_event_id"])
    ids = [e["event_id"] for e in first["events"] + second["events"] + rest["events"]]
    assert len(ids) == 5 and ids == sorted(ids)
    assert page(client, after=rest["last_event_id"]) == {"events": [], "last_event_id": rest["last_event_id"]}
    assert page(client, pool="default")["events"] == page(client)["events"]
    assert page(client, pool="other")["events"] == []


@pytest.mark.parametrize(
    "params, field",
    [
        ({"after": "-1"}, "after"),
        ({"after": "x"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"pool": "Bad!"}, "pool"),
    ],
)
def test_bad_page_parameters_are_400(client, params, field):
    body = assert_error(client.get("/api/events", query_string=params), 400, "VALIDATION_ERROR")
    assert body["details"]["field"] == field


def stream_events(response) -> list[tuple[int, dict]]:
    messages = sse_messages(response.get_data(as_text=True))
    return [(int(m["id"]), json.loads(m["data"])) for m in messages if "data" in m]


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)  # each request reads the outbox
def test_a_stream_resumes_from_last_event_id_with_nothing_lost_or_repeated(app, client):
    for _ in range(3):
        activate(client, user())
    response = client.get("/api/events/stream", query_string={"after": 0})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store" and response.headers["X-Accel-Buffering"] == "yes"
    assert response.get_data(as_text=True).startswith("retry: ")
    seen = stream_events(response)
    assert [data["type"] for _, data in seen] == ["leased"] * 3
    for _ in range(2):
        activate(client, user())
    again = stream_events(client.get("/api/events/stream", headers={"Last-Event-ID": str(seen[-1][0])}))
    ids = [i for i, _ in seen + again]
    assert len(again) == 2 and ids == sorted(set(ids))
    assert ids == [e["event_id"] for e in page(client)["events"]]


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)  # each request reads the outbox
def test_a_new_stream_starts_from_now_and_says_where(app, client):
    activate(client, user())
    response = client.get("/api/events/stream")
    assert stream_events(response) == []
    last = page(client)["last_event_id"]
    assert response.get_data(as_text=True) == f"retry: 750\nid: {last}\n\n"
    activate(client, user())  # between two connections: found with the id the first one gave
    again = stream_events(client.get("/api/events/stream", headers={"Last-Event-ID": str(last)}))
    assert [data["event_id"] for _, data in again] == [last + 1]


BACKLOG = text(
    "INSERT INTO events (type, pool, at) WITH RECURSIVE n(i) AS"
    " (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :rows) SELECT 'queued', 'default', :at FROM n"
)


def write_backlog(app, rows: int, at) -> None:
    """`rows` events in the outbox, none numbered (as between two readers)."""
    with app.app_context():
        run_transaction(lambda conn: conn.execute(BACKLOG, {"rows": rows, "at": at}))


def only_news_after(client, start: str) -> None:
    """A lease made after the stream answer `start`: resuming from its id finds that lease alone."""
    holder = user()
    activate(client, holder)
    resume = {"Last-Event-ID": start.split("id: ")[1].strip()}
    again = stream_events(client.get("/api/events/stream", headers=resume))
    assert [(data["type"], data["user_id"]) for _, data in again] == [("leased", str(holder))]


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)  # each request reads the outbox
def test_a_new_stream_counts_every_event_written_before_it_as_old(app, client, clock):
    """Events nobody has numbered yet may be more than a batch (no reader for a while): a stream
    from now on numbers them all before it says where it starts, else those past the first
    batch came to it as news."""
    write_backlog(app, outbox.PUBLISH_BATCH + 1, clock())
    only_news_after(client, client.get("/api/events/stream").get_data(as_text=True))


def behind_another_publisher(app, path: str, headers: dict | None = None) -> str:
    """GET `path` while another connection holds the publish lock (a publisher at work whose
    snapshot may predate the newest events); checks that the request waits for it; its body."""
    url = app.config["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg://", "postgresql://")
    answers: list[str] = []
    with psycopg.connect(url) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", (outbox.PUBLISH_LOCK,))
        reader = threading.Thread(
            target=lambda: answers.append(app.test_client().get(path, headers=headers).get_data(as_text=True))
        )
        reader.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        with psycopg.connect(url, autocommit=True) as look:
            deadline = time.monotonic() + 10
            while not look.execute(waiting).fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert look.execute(waiting).fetchone()[0] == 1, "the request did not wait for the lock"
        other.rollback()  # the other publisher ends without numbering anything
        reader.join(10)
    return answers[0]


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)
def test_a_new_stream_waits_for_another_publisher_and_counts_its_backlog_as_old(
    app, client, clock, is_postgres
):
    """Another process numbering events holds the publish lock: a stream from now on waits for
    it instead of starting below the events that process has not numbered yet."""
    if not is_postgres:
        pytest.skip("the publish lock is PostgreSQL's (SQLite serialises writers)")
    write_backlog(app, 3, clock())
    only_news_after(client, behind_another_publisher(app, "/api/events/stream"))


@pytest.mark.parametrize("reader", ["page", "stream"])
@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)
def test_a_read_while_another_publisher_is_at_work_finds_the_lease_just_answered(
    app, client, is_postgres, reader
):
    """The other publisher's snapshot may be older than the activation: a reader that gave up
    on the lock would miss the event until some later read."""
    if not is_postgres:
        pytest.skip("the publish lock is PostgreSQL's (SQLite serialises writers)")
    client.get("/healthz")  # the first request starts the app's publisher; it is stopped, so
    app_state(app).publisher.stop()  # only the reader can number the lease's event
    if reader == "page":
        before = page(client)["last_event_id"]
        holder = user()
        activate(client, holder)
        found = json.loads(behind_another_publisher(app, f"/api/events?after={before}"))["events"]
        assert [(e["type"], e["user_id"]) for e in found] == [("leased", holder)]
    else:
        start = client.get("/api/events/stream").get_data(as_text=True)
        holder = user()
        activate(client, holder)
        resume = {"Last-Event-ID": start.split("id: ")[1].strip()}
        body = behind_another_publisher(app, "/api/events/stream", resume)
        found = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
        assert [(e["type"], e["user_id"]) for e in found] == [("leased", holder)]


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)  # each request reads the outbox
def test_an_event_id_past_the_newest_resumes_from_the_newest(app, client):
    """An id the service has not given yet would make a client skip the events up to it."""
    activate(client, user())
    newest = page(client)["last_event_id"]
    assert page(client, after=newest + 1000) == {"events": [], "last_event_id": newest}
    response = client.get("/api/events/stream", headers={"Last-Event-ID": str(newest + 1000)})
    assert response.get_data(as_text=True) == f"retry: 750\nid: {newest}\n\n"
    activate(client, user())  # the client comes back with the id it was moved to: nothing skipped
    again = stream_events(client.get("/api/events/stream", headers={"Last-Event-ID": str(newest)}))
    assert [data["event_id"] for _, data in again] == [newest + 1]


@pytest.mark.options(EVENT_STREAM_SECONDS=30)
def test_a_held_stream_tells_nginx_not_to_buffer_it(client):
    response = client.get("/api/events/stream", buffered=False)
    assert response.status_code == 200 and response.headers["X-Accel-Buffering"] == "no"
    response.close()


def test_a_bad_last_event_id_is_400(client):
    body = assert_error(
        client.get("/api/events/stream", headers={"Last-Event-ID": "abc"}), 400, "VALIDATION_ERROR"
    )
    assert body["details"]["field"] == "Last-Event-ID"


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0)  # each request reads the outbox
@pytest.mark.parametrize("header", ["", "  "])
def test_an_empty_last_event_id_counts_as_absent(client, header):
    """An EventSource that has seen no id sends none; an empty one means the same: `?after=` rules."""
    for _ in range(3):
        activate(client, user())
    ids = [e["event_id"] for e in page(client)["events"]]
    response = client.get(
        "/api/events/stream", query_string={"after": ids[0]}, headers={"Last-Event-ID": header}
    )
    assert [i for i, _ in stream_events(response)] == ids[1:]


def test_event_ids_follow_visibility_not_the_order_of_writing(app, client, is_postgres):
    """A transaction that wrote first but commits last gets the larger id: a reader past the
    others' ids still finds it."""
    if not is_postgres:
        pytest.skip("SQLite serialises writers: the order of writing is the order of commits")
    url = app.config["SQLALCHEMY_DATABASE_URI"].replace("postgresql+psycopg://", "postgresql://")
    insert = "INSERT INTO events (type, pool, at) VALUES (%s, 'default', now())"
    with psycopg.connect(url) as slow, psycopg.connect(url, autocommit=True) as fast:
        slow.execute(insert, ("queued",))  # written first, commits last
        fast.execute(insert, ("cancelled",))
        seen = page(client)
        assert kinds(seen["events"]) == ["cancelled"]
        slow.commit()
    later = page(client, after=seen["last_event_id"])
    assert kinds(later["events"]) == ["queued"]
    assert later["events"][0]["event_id"] > seen["last_event_id"]


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 7, 9, 30, 1, 250, tzinfo=UTC),
        datetime(2026, 12, 7, 9, 30, 1, tzinfo=UTC),  # no fraction: none written
        datetime(2026, 12, 7, 9, 30, 1, 250),  # naive, as SQLite returns it: UTC
        datetime(2026, 12, 7, 10, 30, 1, 250, tzinfo=timezone(timedelta(hours=1))),  # another zone
        datetime(2026, 12, 7, 0, 0, 0, 999999, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ],
)
@pytest.mark.parametrize("holder", [uuid.uuid4(), None])
def test_an_sse_message_carries_the_events_compact_json(holder, at):
    event = {
        "event_id": 7,
        "type": "cleared",
        "pool": "seats-eu_1",
        "token_id": uuid.uuid4(),
        "user_id": holder,
        "fencing_token": 12,
        "at": at,
    }
    data = json.dumps(event_json(event), separators=(",", ":"))  # what a page of events shows
    assert sse(event) == f"id: 7\nevent: cleared\ndata: {data}\n\n"


def test_record_event_refuses_an_unknown_type(app):
    with app.app_context(), pytest.raises(ValueError):
        run_transaction(outbox.record_event, "borrowed", at=None)


def test_the_feed_serves_a_pool_from_its_buffer_and_sends_a_stream_behind_it_to_the_database(app):
    from service.events.stream import Feed

    feed = Feed(app)
    assert feed.after(0, None, timeout=0) == ([], 0)  # not started: nothing yet, no wait
    feed.start, feed.last = 10, 13
    feed.buffer.extend({"event_id": i, "pool": "a" if i % 2 else "b"} for i in (11, 12, 13))
    events, seen = feed.after(11, "a", timeout=0)
    assert [e["event_id"] for e in events] == [13] and seen == 13
    assert feed.after(12, "b", timeout=0) == ([], 13)  # nothing of b after 12, and 13 is seen
    assert feed.after(9, None, timeout=0) is None  # behind the buffer: read the database
    assert [e["event_id"] for e in feed.after(10, None, timeout=0)[0]] == [11, 12, 13]  # the whole buffer


def test_held_streams_at_the_same_place_share_one_text_until_the_next_read(app):
    from service.events.stream import Feed

    feed = Feed(app)
    feed.start, feed.last = 10, 13
    feed.buffer.extend({"event_id": i, "pool": "ab"[i % 2], "sse": f"<{i}>"} for i in (11, 12, 13))
    text, seen = feed.text_after(11, None, timeout=0)
    assert (text, seen) == (b"<12><13>", 13)
    assert feed.text_after(11, None, timeout=0)[0] is text  # built once for every stream there
    assert feed.text_after(11, "a", timeout=0) == (b"<12>", 13)
    assert feed.text_after(13, "a", timeout=0) == (b"", 13)  # nothing yet, no wait
    feed._add([{"event_id": 14, "pool": "b", "sse": "<14>"}])  # a read brings more
    assert feed.text_after(11, None, timeout=0) == (b"<12><13><14>", 14)
    assert feed.text_after(9, None, timeout=0) is None  # behind the buffer: read the database


@pytest.mark.options(EVENT_STREAM_HEARTBEAT_SECONDS=0.3, EVENT_STREAM_POLL_SECONDS=0.05)
def test_a_held_stream_of_a_quiet_pool_moves_its_clients_id_with_each_heartbeat_and_at_its_end(app, client):
    """Its client's Last-Event-ID moves past the other pools' events, so a reconnect does not
    read them all again."""
    from service.events.stream import held

    with app.app_context():
        start = outbox.latest()
    for _ in range(2):
        assert activate(client, user()).status_code == 200  # events of the default pool
    with app.app_context():
        newest = outbox.latest()
    assert newest > start
    stream = held(app, after=start, pool="quiet", seconds=5)
    try:
        assert next(stream) == b": heartbeat\nid: %d\n\n" % newest  # nothing of "quiet" came
    finally:
        stream.close()
    ending = list(held(app, after=start, pool="quiet", seconds=0.1))  # ends before a heartbeat
    app_state(app).event_feed.stop()
    assert ending == [b"id: %d\n\n" % newest]  # the end tells where to resume too


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0.05)
def test_a_short_answer_keeps_the_feed_reading_for_a_while_and_a_stop_ends_it(app, client, monkeypatch):
    from service.events import stream

    monkeypatch.setattr(stream, "KEEP_SECONDS", 1.0)
    feed = app_state(app).event_feed
    assert client.get("/api/events/stream").status_code == 200  # a short answer
    holder = user()
    assert activate(client, holder).status_code == 200
    # nobody asks again: the feed's own thread reads the event (the next answer finds it there)
    wait_for(lambda: any(str(e["user_id"]) == holder for e in feed.buffer), 3, what="the lease in the feed")
    wait_for(lambda: feed._thread is None, 3, what="the feed's thread ending after KEEP_SECONDS")
    assert client.get("/api/events/stream").status_code == 200
    assert feed._thread is not None and feed._thread.is_alive()
    feed.stop()
    assert feed._thread is None


def test_the_feed_reads_on_notices_as_often_as_its_readers_need(app):
    """Every NOTIFIED_READ_GAP while short answers are served (their clients come back within
    `retry:`), every BATCH_SECONDS with held streams alone (they write no more often)."""
    from service.events import stream

    feed = stream.Feed(app)
    assert feed._read_gap() == stream.BATCH_SECONDS
    feed.kept_until = time.monotonic() + stream.KEEP_SECONDS  # what a short answer's `keep` sets
    assert feed._read_gap() == stream.NOTIFIED_READ_GAP
    feed.kept_until = time.monotonic() - 0.001  # KEEP_SECONDS later
    assert feed._read_gap() == stream.BATCH_SECONDS


@pytest.mark.options(EVENT_STREAM_POLL_SECONDS=0.05)
def test_a_short_answer_waits_for_a_read_under_way_and_reads_if_still_due(app, client):
    """A short answer that finds the feed's read under way waits for it, then reads itself if
    the buffer is still older than EVENT_STREAM_POLL_SECONDS: it never answers from a buffer
    older than that because another reader was busy."""
    feed = app_state(app).event_feed
    first = client.get("/api/events/stream").get_data(as_text=True)  # the feed starts from now
    last = first.split("id: ")[1].strip()
    feed.stop()  # no thread of its own: only the requests read
    holder = user()
    assert activate(client, holder).status_code == 200
    time.sleep(0.1)  # the buffer is older than the poll interval

    def read_under_way() -> None:  # holds the feed's reader lock a moment and brings nothing
        with feed._polling:
            time.sleep(0.3)

    busy = threading.Thread(target=read_under_way)
    busy.start()
    time.sleep(0.05)
    events = stream_events(client.get("/api/events/stream", headers={"Last-Event-ID": last}))
    busy.join()
    assert [data["user_id"] for _, data in events] == [holder]


@pytest.mark.parametrize("after", [100, 101, 150, 10098, 20097, 20098, 20099])
def test_the_feed_finds_the_events_after_any_id_in_a_full_buffer(app, after):
    from service.events.stream import BUFFER, Feed

    feed = Feed(app)
    ids = range(101, 101 + 2 * BUFFER, 2)  # a full buffer, ids with gaps
    feed.buffer.extend({"event_id": i, "pool": "a" if i % 3 else "b"} for i in ids)
    assert len(feed.buffer) == BUFFER
    feed.start, feed.last = 100, ids[-1]
    events, seen = feed.after(after, None, timeout=0)
    assert [e["event_id"] for e in events] == [i for i in ids if i > after] and seen == ids[-1]
    of_b, _ = feed.after(after, "b", timeout=0)
    assert [e["event_id"] for e in of_b] == [i for i in ids if i > after and i % 3 == 0]


def test_events_carry_the_pool_and_the_leases_fencing_token(app, client):
    assert (
        client.post("/api/pools", json={"name": "gpu", "size": 1, "lifetime_seconds": 60}).status_code == 201
    )
    first = client.post("/api/pools/gpu/tokens/activate", json={"user_id": user()}).get_json()
    taker = client.post("/api/pools/gpu/tokens/activate", json={"user_id": user()}).get_json()  # evicts
    renewed = client.post(
        f"/api/pools/gpu/tokens/{taker['token_id']}/renew",
        json={"user_id": taker["user_id"], "lease_id": taker["lease_id"]},
    )
    assert renewed.status_code == 200, renewed.get_json()
    activate(client, user())  # the default pool
    gpu = page(client, pool="gpu")["events"]
    assert [(e["type"], e["fencing_token"]) for e in gpu] == [
        ("leased", first["fencing_token"]),
        ("evicted", first["fencing_token"]),
        ("leased", taker["fencing_token"]),
        ("renewed", taker["fencing_token"]),
    ]
    assert {e["pool"] for e in gpu} == {"gpu"}
    assert [e["pool"] for e in page(client)["events"]][-1] == "default"


def test_a_deleted_pool_keeps_its_events_and_an_unknown_one_reads_empty(app, client):
    assert (
        client.post("/api/pools", json={"name": "gone", "size": 1, "lifetime_seconds": 60}).status_code == 201
    )
    client.post("/api/pools/gone/tokens/activate", json={"user_id": user()})
    assert client.delete("/api/pools/gone?force=true").status_code == 204
    assert kinds(page(client, pool="gone")["events"]) == ["leased", "cleared"]
    assert page(client, pool="never-made") == {"events": [], "last_event_id": 0}


def test_a_held_stream_sees_its_client_hang_up_without_writing():
    server, client = socket.socketpair()
    with server:
        assert not hung_up(server)  # open and quiet
        client.sendall(b"x")  # bytes after the request are not a hang-up
        assert not hung_up(server)
        client.close()
        assert not hung_up(server)  # the unread byte comes first
        server.recv(1)
        assert hung_up(server)
    assert hung_up(server)  # closed here: nothing to hold either


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback: (the server's end, the client's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


@pytest.mark.parametrize("how", ["close", "reset", "half-close"])
def test_a_held_stream_sees_a_tcp_client_go_however_it_goes(how):
    """A clean close (FIN), a reset (RST: SO_LINGER 0) and a shutdown of the client's sending
    side (an HTTP client sends nothing after its request, so its end of input means it is gone)."""
    server, client = tcp_pair()
    with server:
        assert not hung_up(server)
        if how == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if how == "half-close":
            client.shutdown(socket.SHUT_WR)
        else:
            client.close()
        wait_for(lambda: hung_up(server), 2, what=f"the client's {how} seen")
    client.close()
