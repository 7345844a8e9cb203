"""Event ids as the events come: a thread per serving process numbers what the process wrote.

A lease change writes its event without an id (service/events/outbox.py). Each
token event this process emits (service/telemetry.py: activations, releases,
renewals, expiries, tickets), and the commit of any transaction that wrote an
event through `outbox.record_event` (tickets cancelled by a pool's change, for
one), wakes the process's publisher, which numbers every
event written so far (`outbox.publish_pending`) and so, in the same
transaction, notifies the event feeds of every instance (`outbox.publish`
sends the NOTIFY when it numbered any). It runs at most every
`PUBLISH_GAP_SECONDS`: a burst of activations costs one numbering transaction
and one notice per gap and worker, not one per commit. PostgreSQL serialises
the commits of notifying transactions on one lock held through the WAL flush,
so a NOTIFY in every activation made activations wait on each other
(docs/PERFORMANCE.md, "Eleventh run").

Events written by processes without a publisher (CLI commands, a
worker that died before its publisher ran) are numbered by the next reader and
by the sweep's housekeeping.
"""

from __future__ import annotations

import logging

from flask import has_app_context
from sqlalchemy import Engine, event

from ..background import BackgroundThread
from ..state import app_state
from ..telemetry import Telemetry, TokenEvent
from . import outbox

log = logging.getLogger("tokenpool.events")

PUBLISH_GAP_SECONDS = 0.1  # at most this often per process; a stream's client sees events within it
RETRY_SECONDS = 1.0  # after a failed attempt (the database is down: one log line a second at most)


class Publisher(BackgroundThread):
    """The process's event publisher: `wake` it after a commit that wrote events."""

    thread_name = "event-publisher"

    def on_token_event(self, token_event: TokenEvent) -> None:
        """The telemetry subscriber: a successful token event may have written events."""
        if token_event.status == "success":
            self.wake()

    def _loop(self) -> None:
        budget = self.app.config["DB_DEADLINE_SECONDS"]
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()  # events committed from here on wake it again
            pause = PUBLISH_GAP_SECONDS
            try:
                with self.app.app_context():
                    outbox.publish_pending(budget_seconds=budget)
            except Exception:
                log.exception("numbering new events failed; retrying in %s s", RETRY_SECONDS)
                self._wake.set()
                pause = RETRY_SECONDS
            if self._stop.wait(pause):
                return


def init_publisher(app, telemetry: Telemetry) -> Publisher:
    """The app's publisher, woken by the token events of `telemetry` (started by service/background.py)."""
    publisher = Publisher(app)
    telemetry.subscribe(publisher.on_token_event)
    return publisher


@event.listens_for(Engine, "commit")
def _wake_on_commit(conn) -> None:
    if conn.info.pop(outbox.EVENTS_NOTED, False) and has_app_context():
        app_state().publisher.wake()


@event.listens_for(Engine, "rollback")
def _forget_on_rollback(conn) -> None:
    if not conn.invalidated:  # an invalidated connection's info is cleared when it reconnects
        conn.info.pop(outbox.EVENTS_NOTED, None)
