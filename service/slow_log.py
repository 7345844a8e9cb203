"""The slow-request and slow-query log lines (`tokenpool.slow`), whatever METRICS_ENABLED says.

The metrics count the same events (`tokenpool_slow_*_total`) when they are on;
the lines do not depend on them.
"""

from __future__ import annotations

import logging

from .db import observe_queries

log = logging.getLogger("tokenpool.slow")


def slow_request(route: str, duration_ms: float) -> None:
    """One line for an API request that took at least SLOW_REQUEST_MS (`route`: the template)."""
    log.warning("slow request", extra={"event": "slow_request", "duration_ms": duration_ms, "route": route})


def init_slow_query_log(app) -> None:
    """Write one line for every statement that takes at least SLOW_QUERY_MS (no parameter values)."""
    slow_seconds = app.config["SLOW_QUERY_MS"] / 1000

    def on_query(statement: str, seconds: float) -> None:
        if seconds >= slow_seconds:
            log.warning(
                "slow query",
                extra={
                    "event": "slow_query",
                    "duration_ms": round(seconds * 1000, 1),
                    "statement": statement[:500],
                },
            )

    observe_queries(app, on_query)
