"""Request and correlation ids in and out, request timing, the one access log line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import g, request

log = logging.getLogger("tokenpool.access")
slow_log = logging.getLogger("tokenpool.slow")

# what we accept from a client or nginx: short, printable, no separators
VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
QUIET_PREFIXES = ("/health", "/healthz", "/live", "/ready", "/metrics")


def _incoming(header: str) -> str | None:
    value = request.headers.get(header)
    return value if value and VALID_ID.match(value) else None


def _before() -> None:
    g.start_time = time.perf_counter()
    g.request_id = _incoming("X-Request-ID") or uuid.uuid4().hex
    g.correlation_id = _incoming("X-Correlation-ID") or g.request_id


def elapsed_ms() -> float:
    """Milliseconds since this request began (its first before_request hook)."""
    return round((time.perf_counter() - g.start_time) * 1000, 3)


def _after(response):
    response.headers["X-Request-ID"] = g.request_id
    response.headers["X-Correlation-ID"] = g.correlation_id
    duration_ms = elapsed_ms()
    g.duration_ms = duration_ms
    path = request.path
    level = logging.DEBUG if path.startswith(QUIET_PREFIXES) else logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level,
            "%s %s %s",
            request.method,
            path,
            response.status_code,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status_code,
                "duration_ms": duration_ms,
                "remote_addr": request.remote_addr,
            },
        )
    return response


def init_request_context(app) -> None:
    """Register the hooks; they run first and last around every request."""
    app.before_request_funcs.setdefault(None, []).insert(0, _before)
    app.after_request(_after)
