"""Server-Sent Events from the outbox: one feed per process, any number of streams on it.

A stream's response stays open `EVENT_STREAM_SECONDS` (0: it sends what is
there and ends, and the client comes back after the `retry:` interval with
`Last-Event-ID`, the way sync gunicorn workers can serve it without a worker
held per stream; with gthread workers a stream holds one thread and stays
open). While streams are open, the process's `Feed` thread publishes pending
events and reads the new ones every EVENT_STREAM_POLL_SECONDS, once for all
its streams; a stream behind the feed's buffer reads the database itself.
Every instance reads the same outbox, so a client of any instance sees the
events of every instance.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterator

from flask import current_app

from ..db import run_transaction
from ..health.checks import draining
from ..timeutil import isoformat
from . import outbox

log = logging.getLogger("tokenpool.events")

BUFFER = 10_000  # events the feed keeps for its streams
PAGE = 1000  # events a stream catching up reads per query


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
    """One event as a Server-Sent Events message (`id:` is the event id)."""
    body = json.dumps(event_json(event), separators=(",", ":"))
    return f"id: {event['event_id']}\nevent: {event['type']}\ndata: {body}\n\n"


def catch_up(after: int, pool: str | None, limit: int = PAGE) -> list[dict]:
    """Number pending events, then read the published ones after `after` (app context needed)."""
    budget = current_app.config["DB_DEADLINE_SECONDS"]  # a stream outlives its request's budget
    return run_transaction(
        outbox.publish_and_read, after=after, limit=limit, pool=pool, budget_seconds=budget
    )


class Feed:
    """The process's reader of the outbox for its open streams (a thread while any is open)."""

    def __init__(self, app) -> None:
        self.app = app
        self.interval = app.config["EVENT_STREAM_POLL_SECONDS"]
        self.changed = threading.Condition()
        self.buffer: collections.deque[dict] = collections.deque(maxlen=BUFFER)
        self.start: int | None = None  # the buffer holds every event after this id (None: not started)
        self.last = 0
        self.streams = 0
        self._thread: threading.Thread | None = None

    def join(self) -> None:
        self._count(1)
        with self.changed:
            self.streams += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="event-feed", daemon=True)
                self._thread.start()

    def leave(self) -> None:
        self._count(-1)
        with self.changed:
            self.streams -= 1

    def _count(self, change: int) -> None:
        self.app.extensions["tokenpool.metrics"].event_streams.inc(change)

    def _loop(self) -> None:
        while True:
            with self.changed:
                if self.streams <= 0:
                    self._thread = None
                    self.start = None
                    self.buffer.clear()
                    return
            try:
                with self.app.app_context():
                    self._poll()
            except Exception:
                log.exception("event feed: reading the outbox failed; retrying")
            time.sleep(self.interval)

    def _poll(self) -> None:
        if self.start is None:
            first = run_transaction(outbox.latest)
            with self.changed:
                self.start = self.last = first
                self.changed.notify_all()
        new = catch_up(self.last, None)
        if not new:
            return
        with self.changed:
            for event in new:
                if len(self.buffer) == self.buffer.maxlen:
                    self.start = self.buffer[0]["event_id"]
                self.buffer.append(event)
            self.last = new[-1]["event_id"]
            self.changed.notify_all()

    def after(self, after: int, pool: str | None, timeout: float) -> tuple[list[dict], int] | None:
        """Buffered events after `after` and the id the stream has now seen up to (waiting up to
        `timeout` for some); None when `after` is behind the buffer (read the database)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                if self.start is not None and after < self.start:
                    return None
                if self.start is not None and self.last > after:
                    new = [e for e in self.buffer if e["event_id"] > after]
                    return [e for e in new if pool is None or e["pool"] == pool], self.last
                left = deadline - time.monotonic()
                if left <= 0 or draining.is_set():
                    return [], after
                self.changed.wait(min(left, 1.0))  # a drain ends the stream within a second


def stream(app, *, after: int, pool: str | None) -> Iterator[str]:
    """The body of one stream response: events after `after`, heartbeats, until its time is up."""
    config = app.config
    hold = config["EVENT_STREAM_SECONDS"]
    heartbeat = config["EVENT_STREAM_HEARTBEAT_SECONDS"]
    # `id:` without data moves the client's Last-Event-ID to where this stream starts, so a
    # client that connected "from now" and got nothing resumes from here, losing nothing
    yield f"retry: {config['EVENT_STREAM_RETRY_MS']}\nid: {after}\n\n"
    with app.app_context():
        caught_up = catch_up(after, pool)
    for event in caught_up:
        after = event["event_id"]
        yield sse(event)
    if hold <= 0:
        return
    feed: Feed = app.extensions["tokenpool.event_feed"]
    feed.join()
    try:
        ends = time.monotonic() + hold
        beat = time.monotonic() + heartbeat
        while not draining.is_set() and time.monotonic() < ends:
            wait = max(0.0, min(beat, ends) - time.monotonic())
            buffered = feed.after(after, pool, wait)
            if buffered is None:  # behind the buffer: catch up from the database
                start = feed.start
                with app.app_context():
                    events = catch_up(after, pool)
                # fewer than a page: every event up to the buffer's start has been read
                seen = events[-1]["event_id"] if events else after
                if len(events) < PAGE:
                    seen = max(seen, start or 0)
            else:
                events, seen = buffered
            for event in events:
                yield sse(event)
            after = seen
            if time.monotonic() >= beat:
                yield ": heartbeat\n\n"
                beat = time.monotonic() + heartbeat
    finally:
        feed.leave()
