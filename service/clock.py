"""The service's one clock: the injectable time tokens, health, monitoring and the sweeper read.

Tests inject a clock as the `TOKEN_CLOCK` setting (a callable returning an
aware UTC datetime, moved by hand with `clock.advance(...)`); in production
it is unset, and token operations leave the time to the database (one clock
for every worker and instance) while health reads the process clock.
"""

from __future__ import annotations

from datetime import datetime

from flask import current_app

from .timeutil import utcnow


def injected(app=None):
    """The `TOKEN_CLOCK` callable of `app` (default: the current app), or None when unset."""
    return (app or current_app._get_current_object()).config.get("TOKEN_CLOCK")  # type: ignore[attr-defined]


def token_time(app=None) -> datetime | None:
    """The injected clock's time (aware UTC), or None: the database's `now()` decides."""
    now = injected(app)
    return now() if now else None


def now(app=None) -> datetime:
    """The injected clock's time, else the process clock (aware UTC)."""
    return token_time(app) or utcnow()
