"""Token events: emitted once, here; logs and metrics subscribe.

Routes and the sweeper call `emit`; nothing else writes token event logs or
token metrics. Subscribers are per app (service/state.py), so two apps in one
process (tests) never see each other's events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from .state import app_state

log = logging.getLogger("tokenpool.events")


@dataclass(frozen=True)
class TokenEvent:
    """One token event as subscribers receive it (duration in milliseconds)."""

    event: str  # activation, release, renewal, expiration, manager_check or ticket
    status: str  # success | failure
    reason: str | None = None  # outcome or failure cause, e.g. evicted, not_holder
    pool: str | None = None  # the pool's name (operator-chosen, so a bounded label)
    token_id: str | None = None
    user_id: str | None = None
    duration_ms: float | None = None
    count: int = 1  # how many tokens the event covers (a sweep, a clear)
    # a ticket's grant: what handed it over (expiry, release, queued), how long it waited,
    # and how long after the token became free its lease started
    after: str | None = None
    waited_seconds: float | None = None
    hand_over_seconds: float | None = None


class Telemetry:
    """The subscriber list of one app."""

    def __init__(self) -> None:
        self.subscribers: list[Callable[[TokenEvent], None]] = [_log_event]

    def subscribe(self, subscriber: Callable[[TokenEvent], None]) -> None:
        """Call `subscriber` with every event published from now on."""
        self.subscribers.append(subscriber)

    def publish(self, event: TokenEvent) -> None:
        """Hand `event` to every subscriber; one that raises is logged and the others still run."""
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must not fail the request
                log.exception("telemetry subscriber %r failed", subscriber)


def _log_event(event: TokenEvent) -> None:
    level = logging.INFO if event.status == "success" else logging.WARNING
    fields = {k: v for k, v in vars(event).items() if v is not None}  # asdict() deep-copies: slower
    log.log(level, "%s %s", event.event, event.status, extra=fields)


def emit(event: str, status: str, **fields) -> None:
    """Publish one token event to every subscriber of the current app."""
    app_state().telemetry.publish(TokenEvent(event=event, status=status, **fields))


@contextmanager
def timed():
    """Yield a function returning the milliseconds elapsed since entry."""
    start = time.perf_counter()
    yield lambda: round((time.perf_counter() - start) * 1000, 3)
