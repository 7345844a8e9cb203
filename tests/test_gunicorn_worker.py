"""service/gunicorn_worker.py: which requests go to a stream thread, on a connection of its own,
and how long the app then holds a stream (events/stream.py). The tripwire on gunicorn's `handle`
is with the other libraries' in tests/protection/test_library_tripwires.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gunicorn import http
from gunicorn.config import Config

from service import gunicorn_worker, stream_threads
from service.events.stream import HOLD_SECONDS, hold_seconds
from service.gunicorn_worker import StreamingSyncWorker, _can_hold
from service.stream_threads import in_stream_thread
from tests.procs import wait_for

STREAM = gunicorn_worker.STREAM_PATH
ROOT = Path(__file__).resolve().parents[1]


def parsed(raw: bytes):
    """`raw` as gunicorn's parser reads it from a connection (the request, before any app)."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(raw)
        return next(http.RequestParser(Config(), server, ("127.0.0.1", 1)))


@pytest.mark.parametrize(
    ("raw", "holds"),
    [
        (b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /api/events/stream?pool=p1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n", True),
        (b"GET /api/events/stream HTTP/1.0\r\n\r\n", True),
        (b"HEAD /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST /api/events/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", True),
        (b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n", True),
        (b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789", False),
        (b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False),
        (b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /api/events/stream/ HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST /api/tokens/activate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", False),
    ],
)
def test_only_a_bodiless_get_of_the_stream_goes_to_a_thread(raw, holds):
    """Also the tripwire for gunicorn's parsed request: `method`, `path` without the query and
    `headers` as (UPPER-CASE NAME, value) pairs."""
    assert _can_hold(parsed(raw), Config()) is holds


def test_tls_that_gunicorn_terminates_stays_in_the_workers_loop(tmp_path):
    config = Config()
    config.set("certfile", str(tmp_path / "cert.pem"))
    config.set("keyfile", str(tmp_path / "key.pem"))
    assert config.is_ssl
    assert not _can_hold(parsed(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n"), config)


@pytest.fixture
def streaming_worker(monkeypatch):
    """This process as if it were a StreamingSyncWorker (its stream threads mark themselves)."""
    monkeypatch.setattr(stream_threads, "_worker", True)


def in_a_stream_thread(function):
    """`function()` called in a thread marked as the worker marks its stream threads."""
    result = []

    def run():
        stream_threads.mark_stream_thread()
        result.append(function())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def test_outside_the_worker_a_stream_is_held_only_as_configured():
    assert in_stream_thread() is None
    assert hold_seconds({"EVENT_STREAM_SECONDS": None}, "GET") == 0  # flask run, tests, plain sync
    assert hold_seconds({"EVENT_STREAM_SECONDS": 30.0}, "GET") == 30  # gthread workers, as set
    assert hold_seconds({"EVENT_STREAM_SECONDS": 30.0}, "HEAD") == 0


def test_in_the_worker_only_its_stream_threads_hold(streaming_worker):
    assert in_stream_thread() is False  # the worker's own loop
    assert hold_seconds({"EVENT_STREAM_SECONDS": None}, "GET") == 0
    assert hold_seconds({"EVENT_STREAM_SECONDS": 30.0}, "GET") == 0  # it would block the worker
    assert in_a_stream_thread(in_stream_thread) is True
    assert in_a_stream_thread(lambda: hold_seconds({"EVENT_STREAM_SECONDS": None}, "GET")) == HOLD_SECONDS
    assert in_a_stream_thread(lambda: hold_seconds({"EVENT_STREAM_SECONDS": 30.0}, "GET")) == 30
    assert in_a_stream_thread(lambda: hold_seconds({"EVENT_STREAM_SECONDS": 0.0}, "GET")) == 0


def test_ending_the_streams_drains_and_waits_for_their_threads(monkeypatch):
    from service.health import checks

    monkeypatch.setattr(checks, "draining", threading.Event())
    worker = StreamingSyncWorker.__new__(StreamingSyncWorker)
    name = gunicorn_worker.STREAM_THREAD  # how the worker finds its stream threads
    stream = threading.Thread(target=lambda: checks.draining.wait(5), name=name)  # ends on the drain
    stuck = threading.Thread(target=threading.Event().wait, args=(1.0,), name=name, daemon=True)
    stream.start()
    assert worker.end_streams(timeout=2.0) == 0 and checks.draining.is_set()
    stuck.start()
    assert worker.end_streams(timeout=0.1) == 1  # bounded: the exit does not wait for ever


def test_the_path_handed_to_threads_is_the_apps_stream_route(app):
    rules = {rule.rule: rule for rule in app.url_map.iter_rules()}
    assert rules[STREAM].endpoint == "events.live" and "GET" in rules[STREAM].methods


def test_the_app_runs_without_gunicorn():
    """`flask run` and the tests load the app: only the worker itself imports gunicorn."""
    script = "import sys, wsgi\nprint('gunicorn' in sys.modules)"
    env = {"PATH": "/usr/bin:/bin", "APP_ENV": "development", "LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[-1] == "False"


def test_a_handed_over_stream_writes_with_gunicorns_timeout_on_a_connection_of_its_own(monkeypatch):
    """The thread's connection outlives the worker's (closed when `handle` returns) and its
    writes give up after `timeout`, so a client that stops reading frees the thread."""
    config = Config()
    config.set("timeout", 7)
    worker = StreamingSyncWorker.__new__(StreamingSyncWorker)
    worker.cfg = config
    seen = []

    def stream(self, listener, req, conn, addr):
        seen.append((conn.gettimeout(), conn.recv(5)))  # the client's bytes, after the worker's close
        conn.close()

    monkeypatch.setattr(StreamingSyncWorker, "_stream", stream)
    server, client = socket.socketpair()
    with client:
        request = parsed(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        worker.handle_request("listener", request, server, None)
        server.close()  # as `handle` does
        client.sendall(b"still")
        wait_for(lambda: seen, 2, what="the stream thread")
    assert seen == [(7, b"still")]


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_stream_work_runs_at_a_lower_priority_than_the_workers_loop():
    """A stream thread (and a thread it starts, as it starts the event feed's) runs at the
    process's nice value plus STREAM_NICENESS, once, never twice; a thread it starts can take
    the process's back (`normal_priority`); the calling thread keeps its own."""
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    lowered = min(19, base + stream_threads.STREAM_NICENESS)

    def in_a_new_thread(set_priority) -> int:
        """The niceness of a thread started here after it called `set_priority`."""
        found = []
        thread = threading.Thread(target=lambda: (set_priority(), found.append(_own_niceness())))
        thread.start()
        thread.join()
        return found[0]

    assert in_a_stream_thread(_own_niceness) == lowered
    assert in_a_stream_thread(lambda: in_a_new_thread(stream_threads.lower_priority)) == lowered
    assert in_a_stream_thread(lambda: in_a_new_thread(stream_threads.normal_priority)) == base
    assert _own_niceness() == base


def test_a_draining_process_holds_no_new_stream(streaming_worker):
    """During the drain a held stream would end at once: it gets a short answer instead (which
    tells nginx `X-Accel-Buffering: yes`), in the worker's stream threads as with gthread."""
    from service.health.checks import draining

    draining.set()
    try:
        assert in_a_stream_thread(lambda: hold_seconds({"EVENT_STREAM_SECONDS": None}, "GET")) == 0
        assert in_a_stream_thread(lambda: hold_seconds({"EVENT_STREAM_SECONDS": 30.0}, "GET")) == 0
    finally:
        draining.clear()
    assert in_a_stream_thread(lambda: hold_seconds({"EVENT_STREAM_SECONDS": None}, "GET")) == HOLD_SECONDS
