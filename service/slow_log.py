"""The slow-request and slow-query log lines (`tokenpool.slow`), whatever METRICS_ENABLED says.

The metrics count the same events (`tokenpool_slow_*_total`) when they are on;
the lines do not depend on them.
"""

from __future__ import annotations

import logging

from .db import observe_queries
from .observation import RequestRecord, observer

log = logging.getLogger("tokenpool.slow")


def _slow_request(record: RequestRecord) -> None:
    """One line for an API request that took at least SLOW_REQUEST_MS (`route`: the template)."""
    if record.slow:
        log.warning(
            "slow request",
            extra={"event": "slow_request", "duration_ms": record.duration_ms, "route": record.route},
        )


def init_slow_log(app) -> None:
    """Write one line for every slow API request (its observation says so) and for every
    statement that takes at least SLOW_QUERY_MS (no parameter values)."""
    observer(app).subscribe(observed=_slow_request)
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
