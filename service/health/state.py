"""One app's probe state: when it was built, whether start-up is done, the cached detailed report."""

from __future__ import annotations

import threading
import time
import weakref

from flask import current_app

from .. import clock
from ..state import app_state


class HealthState:
    """Probe state of one app (`app_state(app).health`), made when the health blueprint is registered."""

    def __init__(self, app) -> None:
        self.built_at = clock.now(app)  # in the health checks' clock
        self.built_monotonic = time.monotonic()
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.at = 0.0
        self.report: dict | None = None
        self.hits = self.misses = 0

    def drop(self) -> None:
        """Forget the cached report (another process asked: invalidation.py)."""
        with self.lock:
            self.at, self.report = 0.0, None


_states: weakref.WeakSet = weakref.WeakSet()


def attach(app) -> HealthState:
    """Give `app` its health state (per app, not per module: apps in one process share no cache)."""
    state = app_state(app).health = HealthState(app)
    _states.add(state)
    app_state(app).generation.on_change(state.drop)
    return state


def clear_cache() -> None:
    """Forget every app's cached detailed report."""
    for state in list(_states):
        with state.lock:
            state.at, state.report = 0.0, None
            state.hits = state.misses = 0


def cache_stats() -> dict:
    """Hits, misses, size and hit rate of this app's detailed-report cache."""
    state = app_state().health
    lookups = state.hits + state.misses
    return {
        "hits": state.hits,
        "misses": state.misses,
        "size": int(state.report is not None),
        "hit_rate": round(state.hits / lookups, 4) if lookups else 0.0,
        "ttl_seconds": current_app.config["HEALTH_CACHE_SECONDS"],
    }
