"""One observation per request: its facts computed once, published to subscribers.

Three hooks: the first before-request hook notes the start time, the route
template and the request's route class (service/route_table.py) on `g`
(`start_time`, `route`, `route_class`); the last after-request hook takes the
status, body size and duration once and publishes one immutable `RequestRecord`; the teardown hook tells the
subscribers that the request is over (also when no response was made).
The access line, the metrics (prometheus-flask-exporter's request metrics
included), the monitoring figures and the slow-request line subscribe; none of
them times the request or looks its route up again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import g, request

from .deadline import request_began
from .labels import url_rule
from .route_table import RouteClass, route_table
from .state import app_state

log = logging.getLogger("tokenpool.observation")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The facts of one request, computed once; what every request subscriber reads."""

    method: str  # as sent (labels.bounded_method bounds it for a label)
    path: str
    route: str  # the route template, `<unmatched>` without a route
    route_class: RouteClass
    status: int
    size: int | None  # body bytes; None for a streamed body (Server-Sent Events), not known until sent
    duration_ms: float  # from the first before-request hook to the last after-request hook
    slow: bool  # API traffic that took at least SLOW_REQUEST_MS


class Observer:
    """The subscribers of one app. `started(route_class)` when a request begins,
    `observed(record)` once its response is final, `finished(route_class, exc)` at teardown
    (`exc`: an exception no error handler answered, else None)."""

    def __init__(self) -> None:
        self.started: list[Callable[[RouteClass], None]] = []
        self.observed: list[Callable[[RequestRecord], None]] = []
        self.finished: list[Callable[[RouteClass, BaseException | None], None]] = []

    def subscribe(self, *, started=None, observed=None, finished=None) -> None:
        """Add the given hooks; each runs in registration order, and a failing one is logged, not raised."""
        for hooks, hook in ((self.started, started), (self.observed, observed), (self.finished, finished)):
            if hook is not None:
                hooks.append(hook)


def _notify(hooks, *values) -> None:
    for hook in hooks:
        try:
            hook(*values)
        except Exception:  # a broken subscriber must not fail the request
            log.exception("request observer %r failed", hook)


def init_observation(app) -> Observer:
    """Register the three hooks (first before-request, last after-request, teardown).

    Needs the route table (`route_table.init_route_table`).
    """
    observer = Observer()
    app_state(app).observer = observer
    slow_ms = app.config["SLOW_REQUEST_MS"]
    table = route_table(app)

    def begin() -> None:
        ctx = g._get_current_object()
        ctx.start_time = start = time.perf_counter()
        request_began(start)
        req = request._get_current_object()  # type: ignore[attr-defined]
        ctx.route = url_rule(req)  # routing is done before the first before-request hook
        ctx.route_class = route_class = table.of(req.blueprint, req.endpoint)
        if observer.started:
            _notify(observer.started, route_class)

    def end(response):
        ctx, req = g._get_current_object(), request._get_current_object()  # type: ignore[attr-defined]
        duration_ms = round((time.perf_counter() - ctx.start_time) * 1000, 3)
        route_class = ctx.route_class
        record = RequestRecord(
            method=req.method,
            path=req.path,
            route=ctx.route,
            route_class=route_class,
            status=response.status_code,
            # measuring a streamed body would read it all here
            size=None if response.is_streamed else response.calculate_content_length() or 0,
            duration_ms=duration_ms,
            slow=route_class.measured and duration_ms >= slow_ms,
        )
        _notify(observer.observed, record)
        return response

    def teardown(exc) -> None:
        route_class = g._get_current_object().get("route_class")  # one proxy lookup fewer
        if route_class is not None and observer.finished:
            _notify(observer.finished, route_class, exc)

    app.before_request_funcs.setdefault(None, []).insert(0, begin)
    app.after_request_funcs.setdefault(None, []).insert(0, end)  # after-request hooks run last first
    app.teardown_request(teardown)
    return observer


def observer(app) -> Observer:
    """The app's subscriber lists (`init_observation`)."""
    return app_state(app).observer
