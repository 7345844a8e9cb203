"""Streams across instances: an activation on instance A reaches a stream of instance B within a
second (woken by PostgreSQL's NOTIFY: B polls only every 5 s); a client that drops its stream and
comes back with Last-Event-ID loses and repeats nothing."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
import uuid

import pytest
from sqlalchemy import text

from tests.conftest import database
from tests.helpers import sse_messages
from tests.procs import Gunicorn, wait_for
from tests.web import request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Stream:
    """A Server-Sent Events client on one connection: `next_event` reads the next `id:` message."""

    def __init__(self, port: int, last_event_id: int | None = None, timeout: float = 5.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        self.conn.request("GET", "/api/events/stream", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type").startswith("text/event-stream")
        self.heartbeats = 0

    def next_event(self) -> dict:
        fields: dict[str, str] = {}
        while True:
            line = self.response.fp.readline().decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    event = json.loads(fields["data"])
                    assert event["event_id"] == int(fields["id"]) and event["type"] == fields["event"]
                    return event
                fields = {}
            elif line.startswith(":"):
                self.heartbeats += 1
            else:
                name, _, value = line.partition(": ")
                fields[name] = value

    def close(self) -> None:
        """Hang up (the response holds the socket too: closing the connection alone leaves it open)."""
        self.response.close()
        self.conn.close()


def listening(url: str) -> bool:
    """Whether a session of the database at `url` LISTENs for new events (its last statement)."""
    with database(url) as conn:
        sql = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'LISTEN tokenpool_events'"
        )
        return conn.execute(text(sql)).scalar() > 0


def activate(port: int) -> dict:
    answer = request(port, "POST", "/api/tokens/activate", body={"user_id": str(uuid.uuid4())})
    assert answer.status == 200, answer.body
    return answer.json()


HOLDING_WORKERS = {
    "default": {},  # sync, with a thread per stream (service/gunicorn_worker.py)
    "gthread": {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "8", "EVENT_STREAM_SECONDS": "60"},
}


@pytest.mark.parametrize("worker", list(HOLDING_WORKERS))
def test_a_stream_on_one_instance_sees_the_other_instances_leases_and_resumes_exactly(pg_database, worker):
    url = pg_database(pool=50)
    env = {"DATABASE_URL": url, "ENABLE_RATE_LIMITING": "false", "SWEEPER_ENABLED": "false"}
    env |= {"POOL_SIZE": "2", "POOL_MAX_OVERFLOW": "2", "EVENT_STREAM_HEARTBEAT_SECONDS": "0.5"}
    streaming = env | HOLDING_WORKERS[worker]
    streaming["EVENT_STREAM_POLL_SECONDS"] = "5"  # only the fallback: a commit's NOTIFY wakes the feed
    with Gunicorn(env, workers=1) as a, Gunicorn(streaming, workers=1) as b:
        stream = Stream(b.port)
        wait_for(lambda: listening(url), 5, what="the stream's feed listening for new events")
        # the one worker of B holds the stream and serves the API beside it
        assert request(b.port, "GET", "/api/tokens/summary", timeout=2).status == 200
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            lease = activate(a.port)
            event = stream.next_event()
            latencies.append(time.monotonic() - started)
            assert (event["type"], event["token_id"], event["user_id"]) == (
                "leased",
                lease["token_id"],
                lease["user_id"],
            )
            assert "lease_id" not in event
        assert max(latencies) < 1.0, latencies
        last = event["event_id"]
        stream.close()  # the client goes away; leases go on meanwhile

        missed = [activate(a.port)["user_id"] for _ in range(3)]
        resumed = Stream(b.port, last_event_id=last)
        again = [resumed.next_event() for _ in range(3)]
        assert [e["user_id"] for e in again] == missed
        assert [e["event_id"] for e in again] == sorted({e["event_id"] for e in again})
        assert again[0]["event_id"] > last
        time.sleep(1.2)  # idle: heartbeats keep the stream open, and nothing is sent twice
        activate(a.port)
        assert resumed.next_event()["event_id"] > again[-1]["event_id"]
        assert resumed.heartbeats >= 1
        resumed.close()


def short_answer(port: int, last_event_id: int) -> tuple[list[dict], int]:
    """One short stream answer after `last_event_id`: its events and the client's new Last-Event-ID."""
    answer = request(port, "GET", "/api/events/stream", headers={"Last-Event-ID": str(last_event_id)})
    assert answer.status == 200, answer.body
    events = []
    for message in sse_messages(answer.body.decode()):
        if "id" in message:
            last_event_id = int(message["id"])
        if "data" in message:
            events.append(json.loads(message["data"]))
    return events, last_event_id


def test_short_answers_of_sync_workers_see_the_other_instances_leases_within_a_second(pg_database):
    # the default model: sync workers, each answer ends at once, the client comes back after
    # `retry:`; B polls only every 5 s, so only its feed's LISTEN, kept after each short answer,
    # can make the next answer carry a lease made on A moments before
    url = pg_database(pool=50)
    env = {"DATABASE_URL": url, "ENABLE_RATE_LIMITING": "false", "SWEEPER_ENABLED": "false"}
    env |= {"POOL_SIZE": "2", "POOL_MAX_OVERFLOW": "2"}
    short = env | {
        "GUNICORN_WORKER_CLASS": "sync",
        "EVENT_STREAM_POLL_SECONDS": "5",
        "EVENT_STREAM_RETRY_MS": "300",
    }
    with Gunicorn(env, workers=1) as a, Gunicorn(short, workers=1) as b:
        _, last = short_answer(b.port, 0)
        wait_for(lambda: listening(url), 5, what="the feed listening after a short answer")
        latencies = []
        for _ in range(5):
            lease = activate(a.port)
            started = time.monotonic()
            found: list[dict] = []
            while not found and time.monotonic() - started < 6:
                time.sleep(0.3)  # the answer's `retry:`
                events, last = short_answer(b.port, last)
                found = [e for e in events if e["user_id"] == lease["user_id"]]
            latencies.append(time.monotonic() - started)
            assert [e["type"] for e in found] == ["leased"]
        assert max(latencies) < 1.0, latencies


def test_the_default_worker_ends_its_held_streams_cleanly_when_the_instance_stops(pg_database):
    """SIGTERM: the held stream gets its last chunk within about a second (the drain), the
    instance exits on its own, and nothing is logged as an error."""
    url = pg_database(pool=10)
    env = {"DATABASE_URL": url, "ENABLE_RATE_LIMITING": "false", "SWEEPER_ENABLED": "false"}
    with Gunicorn(env | {"EVENT_STREAM_HEARTBEAT_SECONDS": "0.5"}, workers=1) as b:
        stream = Stream(b.port)
        lease = activate(b.port)
        assert stream.next_event()["user_id"] == lease["user_id"]
        stopped = time.monotonic()
        b.signal(signal.SIGTERM)
        rest = stream.response.fp.read()  # raw, to the connection's end
        assert time.monotonic() - stopped < 3
        assert rest.endswith(b"0\r\n\r\n")  # the chunked body's end, not a reset
        assert b.proc.wait(15) == 0
    log = b.log_path.read_text()
    assert "Traceback" not in log and '"level":"ERROR"' not in log


def test_a_worker_holds_at_most_its_share_of_streams_and_answers_one_more_503(pg_database):
    url = pg_database(pool=10)
    env = {"DATABASE_URL": url, "ENABLE_RATE_LIMITING": "false", "SWEEPER_ENABLED": "false"}
    env |= {"EVENT_STREAMS_PER_WORKER": "1"}  # heartbeats every 15 s: no write finds the hang-up

    with Gunicorn(env, workers=1) as b:
        first = Stream(b.port)
        assert stream_status(b.port) == 503
        assert request(b.port, "GET", "/api/tokens/summary", timeout=2).status == 200
        first.close()  # its thread sees the hang-up within a second: room for one again
        wait_for(
            lambda: stream_status(b.port) == 200, 3, what="a stream admitted after the first one hung up"
        )


FLOOD = (
    "INSERT INTO events (event_id, type, pool, at)"
    " SELECT (SELECT coalesce(max(event_id), 0) FROM events) + n, 'cleared', 'default', now()"
    " FROM generate_series(1, 30000) n; NOTIFY tokenpool_events"
)


def stream_status(port: int) -> int:
    """A stream request's status; a stream admitted (200) is hung up at once, a refused one is
    the worker's full 503."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/events/stream")
        with conn.getresponse() as response:
            if response.status != 200:
                assert json.loads(response.read())["error_code"] == "SERVICE_UNAVAILABLE"
                assert response.getheader("Retry-After") == "1"
            return response.status
    finally:
        conn.close()


def test_a_client_that_stops_reading_frees_its_stream_thread_at_the_write_timeout(pg_database):
    """A held stream whose client reads nothing more fills the connection's buffers; the thread's
    next write then times out after GUNICORN_TIMEOUT and the stream's slot is free again (it
    would be held for the stream's 300 s otherwise)."""
    url = pg_database(pool=10)
    env = {"DATABASE_URL": url, "ENABLE_RATE_LIMITING": "false", "SWEEPER_ENABLED": "false"}
    env |= {"EVENT_STREAMS_PER_WORKER": "1", "GUNICORN_TIMEOUT": "2"}
    with Gunicorn(env, workers=1) as b:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # a small window, before connecting
        stuck.connect(("127.0.0.1", b.port))
        stuck.settimeout(5)
        try:
            stuck.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: test\r\n\r\n")
            assert stuck.recv(12) == b"HTTP/1.1 200"  # held: the worker's one stream slot is taken
            assert stream_status(b.port) == 503
            with database(url) as conn:  # 30,000 events (about 5 MB of stream), told as the publisher tells
                conn.execute(text(FLOOD))
                conn.commit()
            wait_for(lambda: stream_status(b.port) == 200, 15, what="the slot free after the write timeout")
        finally:
            stuck.close()
