"""The monitoring blueprint (/api/monitoring, admin) and the recording of its figures."""

from __future__ import annotations

from flask import Blueprint, g, has_request_context, request

from ..db import observe_queries
from ..labels import bounded_method, url_rule
from ..observation import RequestRecord, observer
from ..redis_connect import redis_client
from ..route_table import KEYED, declare
from ..state import app_state
from ..telemetry import TokenEvent
from ..timeutil import isoformat, utcnow
from .store import (
    BufferedStore,
    Figures,
    FigureStore,
    MemoryStore,
    RedisStore,
    current_minute,
    request_fields,
)

bp = declare(Blueprint("monitoring", __name__, url_prefix="/api/monitoring"), KEYED)


def store() -> FigureStore:
    """This app's figure store: Redis (scope cluster) or this process (scope process)."""
    return app_state().monitoring


def _figures() -> Figures:
    ctx = g._get_current_object()  # one proxy lookup
    figures = ctx.get("monitoring_figures")
    if figures is None:
        figures = ctx.monitoring_figures = Figures()
    return figures


def _write_now(app, figures: Figures) -> None:
    app_state(app).monitoring.write(current_minute(), figures)


def init_monitoring(app) -> None:
    """Record every API request's figures and serve the API.

    A request's figures go to the store at its end: with Redis, into a buffer
    flushed every MONITORING_FLUSH_SECONDS in one pipeline (0: one pipelined
    write per request).
    """
    redis_url, interval = app.config.get("REDIS_URL"), app.config["MONITORING_FLUSH_SECONDS"]
    figure_store: FigureStore
    if not redis_url:
        figure_store = MemoryStore()
    elif interval > 0:
        figure_store = BufferedStore(RedisStore(redis_client(redis_url, app.config)), interval)
    else:
        figure_store = RedisStore(redis_client(redis_url, app.config))
    app_state(app).monitoring = figure_store
    slow_query_ms = app.config["SLOW_QUERY_MS"]

    def on_event(event: TokenEvent) -> None:
        field = f"op|{event.event}|{event.status}|{event.reason or '-'}"
        if has_request_context():
            _figures().counts[field] += event.count
        else:  # the sweeper thread: its own write
            figures = Figures()
            figures.counts[field] += event.count
            _write_now(app, figures)

    def on_query(statement: str, seconds: float) -> None:
        if not has_request_context():
            return
        figures = _figures()
        figures.counts["queries"] += 1
        if seconds * 1000 >= slow_query_ms:
            figures.counts["slow_queries"] += 1
            figures.add_entry(
                "slow_queries",
                {
                    "time": isoformat(utcnow()),
                    "duration_ms": round(seconds * 1000, 1),
                    "statement": " ".join(statement.split())[:500],  # bound parameters never appear
                    "route": g.get("route") or url_rule(request),  # a request the observation saw, or not
                    "request_id": g.get("request_id"),
                },
            )

    def on_request(record: RequestRecord) -> None:
        if not record.route_class.measured:
            return
        route, status, duration_ms = record.route, record.status, record.duration_ms
        figures = _figures()
        figures.counts.update(request_fields(route, status, duration_ms))
        failed = status >= 400
        if not (record.slow or failed):
            return
        entry = {
            "time": isoformat(utcnow()),
            "duration_ms": duration_ms,
            "method": bounded_method(record.method),
            "route": route,
            "status": status,
            "request_id": g.get("request_id"),
        }
        if record.slow:
            figures.counts["slow_requests"] += 1
            figures.add_entry("slow_requests", entry)
        if failed:  # every error answer is the JSON error body (errors.py), which notes these on g
            error = {"error_id": g.get("error_id"), "error_code": g.get("error_code")}
            figures.add_entry("errors", entry | error)

    def flush(_route_class, _exc) -> None:
        figures = g._get_current_object().pop("monitoring_figures", None)
        if figures:
            _write_now(app, figures)

    observer(app).subscribe(observed=on_request, finished=flush)
    app_state(app).telemetry.subscribe(on_event)
    observe_queries(app, on_query)


from . import routes  # noqa: E402,F401  (registers the views on bp)
