"""Request and correlation ids in and out, request timing, the one access log line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import g, request

from .deadline import request_began
from .labels import url_rule
from .slow_log import slow_request

log = logging.getLogger("tokenpool.access")

# what we accept from a client or nginx: short, printable, no separators
VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}$")
QUIET_PREFIXES = ("/health", "/healthz", "/live", "/ready", "/metrics")


def _incoming(environ: dict, key: str) -> str | None:
    value = environ.get(key)
    return value if value and VALID_ID.match(value) else None


def _before() -> None:
    environ = request.environ
    ctx = g._get_current_object()
    ctx.start_time = time.perf_counter()
    request_began(ctx.start_time)
    ctx.request_id = _incoming(environ, "HTTP_X_REQUEST_ID") or uuid.uuid4().hex
    ctx.correlation_id = _incoming(environ, "HTTP_X_CORRELATION_ID") or ctx.request_id


def elapsed_ms() -> float:
    """Milliseconds since this request began (its first before_request hook)."""
    return round((time.perf_counter() - g.start_time) * 1000, 3)


def _after(response, slow_ms: float = float("inf")):
    ctx, req = g._get_current_object(), request._get_current_object()  # type: ignore[attr-defined]
    # only this hook writes them: added, not searched for and replaced
    response.headers.extend((("X-Request-ID", ctx.request_id), ("X-Correlation-ID", ctx.correlation_id)))
    ctx.duration_ms = duration_ms = elapsed_ms()
    path, method, status = req.path, req.method, response.status_code
    level = logging.DEBUG if path.startswith(QUIET_PREFIXES) else logging.INFO
    if duration_ms >= slow_ms and level == logging.INFO:
        slow_request(url_rule(req), duration_ms)
    if log.isEnabledFor(level):
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "remote_addr": req.remote_addr,
        }
        if status >= 400:
            fields["error_id"] = ctx.get("error_id")
        key = ctx.get("api_key")
        if key is not None:
            fields["key_name"] = key.name  # the key's name, never the key
        agent = req.environ.get("HTTP_USER_AGENT")
        if agent:
            fields["user_agent"] = agent[:256]
        log.log(level, "%s %s %s", method, path, status, extra=fields)
    return response


def init_request_context(app) -> None:
    """Register the hooks; they run first and last around every request."""
    slow_ms = app.config["SLOW_REQUEST_MS"]

    def after(response):
        return _after(response, slow_ms)

    app.before_request_funcs.setdefault(None, []).insert(0, _before)
    app.after_request(after)
