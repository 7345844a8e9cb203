"""Server-Sent Events from the outbox: one feed per process, any number of streams on it.

A stream's response stays open `EVENT_STREAM_SECONDS` (0: it sends what is
there and ends, and the client comes back after the `retry:` interval with
`Last-Event-ID`, the way sync gunicorn workers can serve it without a worker
held per stream; with gthread workers a stream holds one thread and stays
open). Each process keeps a `Feed`: the recent events, each already written
as an SSE message, read from the outbox however many streams read them. While
streams are held open, and for `KEEP_SECONDS` after a short response, a
thread reads it whenever PostgreSQL notifies that new events got their ids
(LISTEN tokenpool_events on a connection of its own; the publishing
transaction sends the notice: service/events/outbox.py) and every
EVENT_STREAM_POLL_SECONDS in any case, so a short response finds what was
numbered a few milliseconds before it (it refreshes the feed itself when the
last read is older than EVENT_STREAM_POLL_SECONDS). A stream behind the
feed's buffer reads the database itself. Every instance reads the same outbox,
so a client of any instance sees the events of every instance.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import orjson
import psycopg
from flask import current_app

from ..config import ConfigError
from ..db import direct_engine, run_transaction
from ..health.checks import draining
from ..state import app_state
from ..stream_threads import in_stream_thread, lower_priority
from ..timeutil import as_utc, isoformat
from . import outbox

log = logging.getLogger("tokenpool.events")

BUFFER = 10_000  # events the feed keeps for its streams
PAGE = 1000  # events read per query
IDLE_SECONDS = 60  # a feed nobody read for this long starts again from the newest event
RELISTEN_SECONDS = 5.0  # after the listening connection failed, how long before connecting again
NOTIFIED_READ_GAP = 0.05  # reads on notices at most this often: a burst of commits, one read
KEEP_SECONDS = 10.0  # after a short response, how long the feed's thread keeps reading on notices
HOLD_SECONDS = 300.0  # a held stream's life when EVENT_STREAM_SECONDS is unset (`hold_seconds`)
# A held stream writes at most this often, the events of that time in one write. Woken by every
# read of the feed instead (20 a second under load), 100 held streams left activation 0.57-0.81
# of its rate; batched, 0.75-1.07 (docs/PERFORMANCE.md). An event still reaches a client within
# about 0.6 s (the publisher's pace, the feed's read on the notice, this wait: 0.1 + 0.25 + 0.25).
BATCH_SECONDS = 0.25
TEXTS = 16  # `Feed.text_after` keeps the texts of this many places (after, pool) per read
PEER_CHECK_SECONDS = 1.0  # an idle held stream looks this often whether its client hung up


def _event_id(event: dict) -> int:
    return event["event_id"]


def event_json(event: dict) -> dict:
    """An event as the API shows it (ids and times as strings)."""
    return {
        "event_id": event["event_id"],
        "type": event["type"],
        "pool": event["pool"],
        "token_id": str(event["token_id"]) if event["token_id"] else None,
        "user_id": str(event["user_id"]) if event["user_id"] else None,
        "fencing_token": event["fencing_token"],
        "at": isoformat(event["at"]),
    }


def sse(event: dict) -> str:
    """One event as a Server-Sent Events message (`id:` is the event id).

    Its data is `event_json` as compact JSON, written by orjson straight from the row's
    values (the same text as `json.dumps` with compact separators; orjson writes a UUID as
    `str` does and, with these options, a UTC time as `isoformat` does: 0.8 us an event
    against 2.5 through `event_json`, and every worker writes every event of every instance).
    """
    at = event["at"]
    if at.utcoffset():  # an offset other than UTC's (naive values are UTC: OPT_NAIVE_UTC)
        at = as_utc(at)
    body = orjson.dumps(
        {
            "event_id": event["event_id"],
            "type": event["type"],
            "pool": event["pool"],
            "token_id": event["token_id"],
            "user_id": event["user_id"],
            "fencing_token": event["fencing_token"],
            "at": at,
        },
        option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC,
    ).decode()
    return f"id: {event['event_id']}\nevent: {event['type']}\ndata: {body}\n\n"


def catch_up(after: int, pool: str | None, limit: int = PAGE, *, publish: bool = True) -> list[dict]:
    """Number pending events (unless `publish` is False), then read the published ones after
    `after`, each with its SSE message under "sse" (app context needed)."""
    budget = current_app.config["DB_DEADLINE_SECONDS"]  # a stream outlives its request's budget
    read = outbox.publish_and_read if publish else outbox.read_events
    events = run_transaction(read, after=after, limit=limit, pool=pool, budget_seconds=budget)
    for event in events:
        event["sse"] = sse(event)
    return events


class Feed:
    """The process's recent events, for its streams (a thread reads it while any is held open
    and for a while after each short response)."""

    def __init__(self, app) -> None:
        self.app = app
        self.interval = app.config["EVENT_STREAM_POLL_SECONDS"]
        self.thread_wait = max(self.interval, NOTIFIED_READ_GAP)  # 0 polls per request, not in a loop
        self.changed = threading.Condition()
        self.buffer: collections.deque[dict] = collections.deque(maxlen=BUFFER)
        self.start: int | None = None  # the buffer holds every event after this id (None: not started)
        self.last = 0
        self.polled_at = 0.0
        self.streams = 0
        self.kept_until = 0.0  # the thread reads on until then, held streams or not (`keep`)
        self.stopped = False  # the process is ending (`stop`): the thread ends, short answers read
        self._texts: dict[tuple[int, str | None], bytes] = {}  # (after, pool): `text_after`, up to `last`
        self._polling = threading.Lock()
        self._thread: threading.Thread | None = None

    def join(self) -> None:
        """A stream held open starts reading the feed (the thread starts with the first)."""
        self._count(1)
        with self.changed:
            self.streams += 1
            self._run()

    def keep(self) -> None:
        """A short response was served: keep the thread reading for `KEEP_SECONDS` more, so
        the client's next response, one `retry:` interval later, finds the events numbered
        meanwhile without waiting for a poll."""
        with self.changed:
            self.kept_until = time.monotonic() + KEEP_SECONDS
            self._run()

    def stop(self, timeout: float = 5) -> None:
        """End the thread (within the poll interval) and wait for it at most `timeout` seconds;
        responses go on reading the outbox themselves."""
        with self.changed:
            self.stopped = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:  # self.changed held
        if self.stopped:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="event-feed", daemon=True)
            self._thread.start()

    def leave(self) -> None:
        """A held stream ended (the polling thread stops when none is left)."""
        self._count(-1)
        with self.changed:
            self.streams -= 1

    def _count(self, change: int) -> None:
        app_state(self.app).metrics.event_streams.inc(change)

    def _loop(self) -> None:
        lower_priority()  # the feed's reads and formatting yield the processor to the API
        listener: psycopg.Connection | None = None
        listen_at = 0.0  # when to try to listen (again)
        # after a notice only read: a publisher numbered the events and said so (numbering here
        # too would make every feed's read notify every other feed); else number what is pending
        publish = True
        try:
            while True:
                with self.changed:
                    if self.stopped or (self.streams <= 0 and time.monotonic() >= self.kept_until):
                        self._thread = None
                        return
                try:
                    with self.app.app_context():
                        self.fresh(force=True, publish=publish)
                except Exception:
                    log.exception("event feed: reading the outbox failed; retrying")
                if listener is None and time.monotonic() >= listen_at:
                    listener, listen_at = self._listen(), time.monotonic() + RELISTEN_SECONDS
                if listener is None:
                    time.sleep(self.thread_wait)
                    continue
                heard = self._heard(listener)
                publish = not heard
                if heard:  # a burst of commits is read together
                    time.sleep(max(0.0, self.polled_at + self._read_gap() - time.monotonic()))
                elif heard is None:
                    listener = None
        finally:
            if listener is not None:
                listener.close()

    def _read_gap(self) -> float:
        """Seconds between reads on notices: `NOTIFIED_READ_GAP` while a short answer was served
        lately (its client comes back within `retry:`), else `BATCH_SECONDS` (held streams
        write no more often than that: reading more often only costs the API processor time)."""
        return NOTIFIED_READ_GAP if time.monotonic() < self.kept_until else BATCH_SECONDS

    def _listen(self) -> psycopg.Connection | None:
        """A connection of its own that LISTENs for new events, to the database `direct_engine`
        names (a LISTEN needs a session of its own); None on SQLite, through a transaction-pooling
        PgBouncer without DATABASE_DIRECT_URL, or when connecting fails (the feed then polls, and
        tries again later). The connection is outside the engine's pool: it is held for good."""
        try:
            with self.app.app_context():
                url = direct_engine().url
        except ConfigError:  # PgBouncer and no DATABASE_DIRECT_URL
            return None
        if url.get_backend_name() != "postgresql":
            return None
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            timeout = self.app.config["DB_CONNECT_TIMEOUT"]
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=timeout)
            conn.execute(f"LISTEN {outbox.CHANNEL}")
            return conn
        except psycopg.Error as exc:
            log.warning("event feed: cannot listen for new events (%s); polling", type(exc).__name__)
            return None

    def _heard(self, listener: psycopg.Connection) -> bool | None:
        """Wait up to the poll interval for a notice of new events (the notices that came
        meanwhile count as one): whether one came; None when the connection failed (it is
        closed)."""
        try:
            # consumed to its end: a generator left open would hold the connection's lock
            return len(list(listener.notifies(timeout=self.thread_wait, stop_after=1))) > 0
        except psycopg.Error as exc:
            log.warning("event feed: listening for new events failed (%s); polling", type(exc).__name__)
            listener.close()
            return None

    def fresh(self, *, force: bool = False, publish: bool = True) -> None:
        """Read new events unless the last read is younger than the poll interval (`force`: read
        anyway; `publish` False: read only what is numbered, see `catch_up`; app context). One
        reader at a time: another waits for the read under way (at most DB_DEADLINE_SECONDS,
        then uses the buffer as it is) and reads only if still due."""
        if not force and self._recent():
            return
        if not self._polling.acquire(timeout=self.app.config["DB_DEADLINE_SECONDS"]):
            return
        try:
            if not force and self._recent():  # read by the one it waited for
                return
            if time.monotonic() - self.polled_at > IDLE_SECONDS:  # unread for long: from the newest
                first = outbox.latest()
                with self.changed:
                    self.buffer.clear()
                    self._texts.clear()
                    self.start = self.last = first
                    self.changed.notify_all()
            while True:
                new = catch_up(self.last, None, publish=publish)
                self._add(new)
                if len(new) < PAGE:
                    break
            self.polled_at = time.monotonic()
        finally:
            self._polling.release()

    def _recent(self) -> bool:
        return time.monotonic() - self.polled_at < self.interval

    def _add(self, new: list[dict]) -> None:
        if not new:
            return
        with self.changed:
            for event in new:
                if len(self.buffer) == self.buffer.maxlen:
                    self.start = self.buffer[0]["event_id"]
                self.buffer.append(event)
            self.last = new[-1]["event_id"]
            self._texts.clear()  # texts end at the last id: none is current any more
            self.changed.notify_all()

    def _since(self, after: int, pool: str | None) -> list[dict]:
        """The buffered events after `after` (of `pool` when given), oldest first (lock held).

        The buffer is in event id order: a binary search finds the first, and the
        events are copied from there by C-level iteration (a stream reading every
        pool at 1,000 activations/s asks for some 2,000 events a second).
        """
        first = bisect.bisect_right(self.buffer, after, key=_event_id)
        new = list(itertools.islice(reversed(self.buffer), len(self.buffer) - first))
        new.reverse()
        return new if pool is None else [e for e in new if e["pool"] == pool]

    def after(self, after: int, pool: str | None, timeout: float) -> tuple[list[dict], int] | None:
        """Buffered events after `after` and the id the stream has now seen up to (waiting up to
        `timeout` for some); None when `after` is behind the buffer (read the database)."""
        return self._when_past(after, timeout, lambda: self._since(after, pool), [])

    def text_after(self, after: int, pool: str | None, timeout: float) -> tuple[bytes, int] | None:
        """As `after`, with the events as one SSE text (UTF-8), built once for every held stream
        at the same place: they all follow the feed, so after each read one text serves them."""
        return self._when_past(after, timeout, lambda: self._text(after, pool), b"")

    def _when_past(self, after: int, timeout: float, take, empty):
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                if self.start is not None and after < self.start:
                    return None
                if self.start is not None and self.last > after:
                    return take(), self.last
                left = deadline - time.monotonic()
                if left <= 0 or draining.is_set():
                    return empty, after
                self.changed.wait(min(left, 1.0))  # a drain ends the stream within a second

    def _text(self, after: int, pool: str | None) -> bytes:  # lock held
        key = (after, pool)
        text = self._texts.get(key)
        if text is None:
            text = _joined(self._since(after, pool)).encode()
            if len(self._texts) >= TEXTS:
                self._texts.clear()
            self._texts[key] = text
        return text


def _joined(events: list[dict]) -> str:
    """The events' SSE messages, one after the other."""
    return "".join(e["sse"] for e in events)


def _round(feed: Feed, after: int, pool: str | None, timeout: float) -> tuple[list[dict], int]:
    """The events after `after` (from the buffer, else the database) and the id seen up to."""
    buffered = feed.after(after, pool, timeout)
    return buffered if buffered is not None else _from_database(feed, after, pool)


def _from_database(feed: Feed, after: int, pool: str | None) -> tuple[list[dict], int]:
    """For a stream behind the feed's buffer: a page of events after `after` and the id seen up to."""
    start = feed.start
    with feed.app.app_context():  # a held stream's rounds run outside its request
        events = catch_up(after, pool)
    seen = events[-1]["event_id"] if events else after
    if len(events) < PAGE:  # fewer than a page: every event up to the buffer's start has been read
        seen = max(seen, start or 0)
    return events, seen


def _chunk(feed: Feed, after: int, pool: str | None, timeout: float) -> tuple[bytes, int]:
    """As `_round`, with the events as one SSE text (UTF-8; from the buffer, shared with the
    other held streams at the same place)."""
    buffered = feed.text_after(after, pool, timeout)
    if buffered is not None:
        return buffered
    events, seen = _from_database(feed, after, pool)
    return _joined(events).encode(), seen


def _message(events: list[dict], seen: int, sent: int | None) -> str:
    """The events' messages; then `id: seen` when the stream moved past what it sent (events of
    other pools, or none yet): a message without data moves the client's Last-Event-ID."""
    text = _joined(events)
    last = events[-1]["event_id"] if events else sent
    return text + (f"id: {seen}\n\n" if last != seen else "")


def hold_seconds(config, method: str) -> float:
    """How long a stream response stays open, in seconds; 0: a short answer (what there is, then
    the client comes back after `retry:`).

    `EVENT_STREAM_SECONDS` when set (with gthread workers: a thread each; with plain sync
    workers a held stream holds the worker). Unset: `HOLD_SECONDS` in a stream thread of the
    default worker (service/gunicorn_worker.py), 0 anywhere else. Never held: a `HEAD`, a
    stream request that worker kept in its own loop (holding it would block the worker), or
    any while the process drains (a held stream would end at once; a short answer tells nginx
    so: `X-Accel-Buffering: yes`).
    """
    where = in_stream_thread()
    if method != "GET" or where is False or draining.is_set():
        return 0.0
    seconds = config["EVENT_STREAM_SECONDS"]
    if seconds is None:
        return HOLD_SECONDS if where else 0.0
    return seconds


def first_round(app, *, after: int, pool: str | None, held: bool) -> tuple[str, int]:
    """The start of a stream response (in the request): `retry:`, the events after `after`, and
    where the client's Last-Event-ID stands after them (`held`: the response stays open)."""
    feed = app_state(app).event_feed
    feed.fresh()
    if not held:
        feed.keep()
    if after > feed.last:  # past what this process has read: past the newest event too?
        after = min(after, run_transaction(outbox.newest))  # such an id would skip events
    events, seen = _round(feed, after, pool, 0)
    head = f"retry: {app.config['EVENT_STREAM_RETRY_MS']}\n"
    return head + (_message(events, seen, None) or "\n"), seen


def hung_up(peer: socket.socket) -> bool:
    """Whether the client has closed its end of `peer` (reading would give end of file), found
    without blocking or writing: a held stream learns it otherwise only when a write fails, a
    heartbeat or two later, and holds its worker's stream slot until then. False for TLS
    sockets (no peeking through TLS)."""
    if isinstance(peer, ssl.SSLSocket):
        return False
    try:
        readable, _, _ = select.select([peer], [], [], 0)
        return bool(readable) and peer.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed
        return True


def held(
    app, *, after: int, pool: str | None, seconds: float, peer: socket.socket | None = None
) -> Iterator[bytes]:
    """The rest of a stream held open: new events (a write per `BATCH_SECONDS` at most) and
    heartbeats (a comment and `id:` the id the stream has read up to, which moves the client's
    Last-Event-ID past other pools' events; that id again at the end) until `seconds` are up,
    the process drains or the client hangs up (`peer`, the connection where the server gives it: gunicorn's
    `gunicorn.socket`; looked at every `PEER_CHECK_SECONDS` at least)."""
    heartbeat = app.config["EVENT_STREAM_HEARTBEAT_SECONDS"]
    feed = app_state(app).event_feed
    feed.join()
    try:
        ends = time.monotonic() + seconds
        beat = time.monotonic() + heartbeat
        look = time.monotonic()  # when to look whether the client hung up
        while not draining.is_set() and time.monotonic() < ends:
            now = time.monotonic()
            wait = max(0.0, min(beat, ends, look) - now)
            chunk, seen = _chunk(feed, after, pool, wait)
            if peer is not None and time.monotonic() >= look:
                if hung_up(peer):
                    return
                look = time.monotonic() + PEER_CHECK_SECONDS
            if chunk:
                yield chunk
                time.sleep(BATCH_SECONDS)  # what comes meanwhile goes in the next write
            after = seen
            if time.monotonic() >= beat:  # with the id reached: a client of a quiet pool resumes there
                yield b": heartbeat\nid: %d\n\n" % after
                beat = time.monotonic() + heartbeat
        yield b"id: %d\n\n" % after  # its time is up or the process drains: resume from here
    finally:
        feed.leave()
