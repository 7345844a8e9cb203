"""Prometheus metrics on /metrics: HTTP requests (prometheus-flask-exporter), token events, pool gauges.

Under gunicorn `PROMETHEUS_MULTIPROC_DIR` is set before start (gunicorn.conf.py
empties it), every worker writes its samples there, and a scrape of any worker
sums them all. Without it (flask run, tests) each app has a private registry.
Pool gauges are read from the database at scrape time, so every worker
reports the same truth.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from sqlalchemy import event

from . import metrics_storage
from .db import bounded_connection, observe_queries, pool_limit
from .errors import Unauthorized
from .extensions import db
from .labels import METHODS, OTHER, url_rule
from .log_shipping import report_drops_to
from .openapi import Answer, operation
from .telemetry import TokenEvent
from .tokens import reads

log = logging.getLogger("tokenpool.metrics")
bp = Blueprint("metrics", __name__)
# not API traffic: the probes, /metrics, the docs and the console's page and files
NOT_API = r"^/(metrics|healthz?|live|ready|openapi\.json|console)(/|$)"
NOT_API_PATH = re.compile(NOT_API)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
DB_OPERATIONS = frozenset(
    ("select", "insert", "update", "delete", "begin", "commit", "rollback", "set", "lock")
)


class LabelCache:
    """`metric.labels(*values)`, remembered per process.

    prometheus_client checks and stringifies the values and takes a lock on
    every `labels()` call (~2 us); the child it returns never changes.
    """

    def __init__(self) -> None:
        self._children: dict[tuple, object] = {}

    def __call__(self, metric, *values):
        """`metric.labels(*values)`, created once per metric and values."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:  # values are bounded (labels.py); a guard all the same
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child


def multiprocess() -> bool:
    """Whether metrics are kept in multiprocess files (PROMETHEUS_MULTIPROC_DIR set: under gunicorn)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def ensure_multiprocess_dir() -> bool:
    """Create `PROMETHEUS_MULTIPROC_DIR` when it is set but missing; True when it is set.

    prometheus_client writes each metric of a process to a file there and fails
    with FileNotFoundError when the folder does not exist, so a `flask` command
    run before gunicorn (which empties the folder at start) must find it too.
    Raises ConfigError naming the variable when it cannot be created or written.
    """
    directory = os.environ.get(metrics_storage.ENV)
    if not directory:
        return False
    metrics_storage.check_folder(directory)
    return True


class TokenMetrics:
    """The business metrics of one app, fed by telemetry events and hooks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.child = LabelCache()
        self.activations = Counter(
            "tokenpool_activations_total",
            "Activations by result and reason",
            ["result", "reason"],
            registry=r,
        )
        self.releases = Counter("tokenpool_releases_total", "Leases ended, by reason", ["reason"], registry=r)
        self.failures = Counter(
            "tokenpool_token_operation_failures_total",
            "Failed token operations by operation and reason",
            ["operation", "reason"],
            registry=r,
        )
        self.durations = Histogram(
            "tokenpool_token_operation_duration_seconds",
            "Token operation duration",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.sweeper_runs = Counter(
            "tokenpool_sweeper_runs_total", "Token manager runs by result", ["result"], registry=r
        )
        self.sweeper_last_run = Gauge(
            "tokenpool_sweeper_last_run_timestamp_seconds",
            "Unix time of the last successful sweep by this service",
            registry=r,
            multiprocess_mode="max",
        )
        self.rate_limit_hits = Counter(
            "tokenpool_rate_limit_hits_total", "Requests refused by a rate limit", ["limit"], registry=r
        )
        self.rate_limit_fallbacks = Counter(
            "tokenpool_rate_limit_storage_fallbacks_total",
            "Times the limiter fell back to in-memory storage because Redis failed",
            registry=r,
        )
        self.auth_failures = Counter(
            "tokenpool_auth_failures_total", "Rejected API key attempts by reason", ["reason"], registry=r
        )
        self.log_lines_dropped = Counter(
            "tokenpool_log_lines_dropped_total",
            "Log lines not shipped to LOGSTASH_HOST, by reason (queue_full, collector_down)",
            ["reason"],
            registry=r,
        )
        self.exceptions = Counter(
            "tokenpool_unhandled_exceptions_total", "Unexpected exceptions by type", ["type"], registry=r
        )
        self.slow_requests = Counter(
            "tokenpool_slow_requests_total", "Requests slower than SLOW_REQUEST_MS", registry=r
        )
        self.slow_queries = Counter(
            "tokenpool_slow_queries_total", "Statements slower than SLOW_QUERY_MS", registry=r
        )
        self.query_duration = Histogram(
            "tokenpool_db_query_duration_seconds",
            "Database statement duration",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.pool_checked_out = Gauge(
            "tokenpool_db_pool_checked_out_connections",
            "Database connections in use, summed over live workers",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_connections = Gauge(
            "tokenpool_db_pool_connections",
            "Database connections of the workers' pools by state (in_use, idle, max), over live workers",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_errors = Counter(
            "tokenpool_db_errors_total",
            "Database errors by operation (the statement's verb, connect, or other)",
            ["operation"],
            registry=r,
        )
        self.in_progress = Gauge(
            "tokenpool_http_requests_in_progress",
            "API requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.response_size = Histogram(
            "tokenpool_http_response_size_bytes",
            "API response body size",
            ["url_rule"],
            buckets=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
            registry=r,
        )

    def on_event(self, e: TokenEvent) -> None:
        """Telemetry subscriber: one token event, its counters."""
        child = self.child
        if e.duration_ms is not None:
            child(self.durations, e.event).observe(e.duration_ms / 1000)
        if e.status == "failure":
            child(self.failures, e.event, e.reason or "unknown").inc()
            if e.event == "activation":
                child(self.activations, "failure", e.reason or "unknown").inc()
            elif e.event == "manager_check":
                child(self.sweeper_runs, "failure").inc()
            return
        if e.event == "activation":
            child(self.activations, "success", e.reason or "available").inc()
            if e.reason in ("evicted", "expired"):
                child(self.releases, e.reason).inc()
        elif e.event in ("release", "expiration"):
            child(self.releases, e.reason or "released").inc(e.count)
        elif e.event == "manager_check":
            child(self.sweeper_runs, "success").inc()
            self.sweeper_last_run.set(time.time())


class PoolCollector(Collector):
    """Pool gauges read from the database when Prometheus scrapes."""

    def __init__(self, app) -> None:
        self.app = app

    def collect(self):
        """The pool gauges and tokenpool_database_up, from one query at scrape time."""
        up = GaugeMetricFamily("tokenpool_database_up", "1 when the database answered the scrape")
        families = {
            "total": GaugeMetricFamily("tokenpool_pool_size", "Tokens in the pool"),
            "active": GaugeMetricFamily("tokenpool_tokens_active", "Tokens leased right now"),
            "available": GaugeMetricFamily("tokenpool_tokens_available", "Tokens free right now"),
        }
        try:
            with self.app.app_context(), bounded_connection() as conn:
                counts = reads.summary(conn)
            for name, family in families.items():
                family.add_metric([], counts[name])
            up.add_metric([], 1)
            yield from families.values()
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("pool gauges unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
        yield up


def db_operation(statement: str | None) -> str:
    """The label of a failed database call: `connect` without a statement, else its verb
    (`select`, `insert`, `update`, `delete`, `begin`, `commit`, `rollback`, `set`, `lock`), else `other`."""
    if statement is None:
        return "connect"
    verb = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else ""
    return verb if verb in DB_OPERATIONS else OTHER


def _track_database(app, metrics: TokenMetrics) -> None:
    """Statement latency, slow statements, errors by operation, and the pool's connections by state.

    The pool gauges follow SQLAlchemy's pool events in each worker (livesum over
    live workers): `in_use` checkout +1 / checkin -1; `idle` connect +1,
    checkout -1, checkin +1, close -1 (a connection invalidated while in use is
    closed and then checked in without one: -1 +1); `max` is pool_size +
    max_overflow, set once.
    """
    slow_ms = app.config["SLOW_QUERY_MS"]
    child = metrics.child

    def on_query(statement: str, elapsed: float) -> None:
        metrics.query_duration.observe(elapsed)
        if elapsed * 1000 >= slow_ms:
            metrics.slow_queries.inc()  # the line: service/slow_log.py

    observe_queries(app, on_query)
    with app.app_context():
        engine = db.engine
    in_use, idle = child(metrics.pool_connections, "in_use"), child(metrics.pool_connections, "idle")
    limit = pool_limit(engine.pool)
    if limit is not None:
        metrics.pool_connections.labels("max").set(limit)

    @event.listens_for(engine, "connect")
    def _connect(*_):
        idle.inc()

    @event.listens_for(engine, "close")
    def _close(*_):
        idle.dec()

    @event.listens_for(engine, "checkout")
    def _checkout(*_):
        metrics.pool_checked_out.inc()
        in_use.inc()
        idle.dec()

    @event.listens_for(engine, "checkin")
    def _checkin(*_):
        metrics.pool_checked_out.dec()
        in_use.dec()
        idle.inc()

    @event.listens_for(engine, "handle_error")
    def _error(context):
        child(metrics.db_errors, db_operation(context.statement)).inc()


def _export_http_metrics(app, registry: CollectorRegistry) -> PrometheusMetrics:
    """prometheus-flask-exporter's request metrics on `registry`, with a bounded method label.

    `flask_http_request_duration_seconds{method,url_rule,status}` (histogram),
    `flask_http_request_total{method,status}` and, for a request whose view
    raised, `flask_http_request_exceptions_total{method,status}`, plus
    `flask_exporter_info{version}`; API traffic only (`NOT_API`). `/metrics`
    is served by `metrics_endpoint` (bearer token, folder lock, pool gauges).

    The exporter labels with `request.method` as sent and has no hook for that
    label (`group_by` and `default_labels` cannot replace it), so a client
    choosing methods freely would add series. Flask runs after-request and
    teardown functions in the reverse order of registration: the pair
    registered around the exporter's shows its hooks a method outside
    `labels.METHODS` as `other` and puts the client's back right after. Every
    other hook sees the method as sent. Cost: one set lookup per request.
    """

    def restore(response=None):
        sent = g.pop("method_as_sent", None)
        if sent is not None:
            request.method = sent
        return response

    def bound(response=None):
        if request.method not in METHODS:
            g.method_as_sent = request.method
            request.method = OTHER
        return response

    exporter = PrometheusMetrics.for_app_factory(
        path=None,
        registry=registry,
        group_by=url_rule,
        excluded_paths=[NOT_API],
        defaults_prefix="flask",
        buckets=HTTP_BUCKETS,
    )
    app.after_request(restore)
    app.teardown_request(restore)
    exporter.init_app(app)
    app.after_request(bound)
    app.teardown_request(bound)
    return exporter


def _track_requests(app, metrics: TokenMetrics) -> None:
    """Per API request, besides the exporter's latency and count: in flight and body size.

    Label children are looked up once per process (`LabelCache`): prometheus_client
    checks and stringifies label values and takes a lock on each `labels()` call.
    """
    slow_ms = app.config["SLOW_REQUEST_MS"]
    child = metrics.child

    @app.before_request
    def _in():
        if not NOT_API_PATH.match(request.path):
            g.metrics_tracked = True
            metrics.in_progress.inc()

    @app.after_request
    def _out(response):
        # a streamed body (Server-Sent Events) has no size yet: measuring it would read it all here
        if g.get("metrics_tracked") and not response.is_streamed:
            child(metrics.response_size, url_rule(request)).observe(response.calculate_content_length() or 0)
        return response

    @app.teardown_request
    def _done(exc):
        if g.pop("metrics_tracked", False):
            metrics.in_progress.dec()
            duration_ms = g.get("duration_ms")
            if duration_ms is not None and duration_ms >= slow_ms:
                metrics.slow_requests.inc()  # the line: service/slow_log.py


def init_metrics(app) -> TokenMetrics:
    """Create the app's metrics, subscribe them to telemetry and serve /metrics if enabled.

    With `PROMETHEUS_MULTIPROC_DIR` set, raises ConfigError when that folder cannot
    be created or written, and makes the samples' files full-disk safe (metrics_storage).
    """
    if ensure_multiprocess_dir():
        metrics_storage.use_reserved_files()
    registry = CollectorRegistry(auto_describe=True)
    metrics = TokenMetrics(registry)
    app.extensions["tokenpool.metrics"] = metrics
    app.extensions["tokenpool.telemetry"].subscribe(metrics.on_event)
    if app.config.get("LOGSTASH_HOST"):
        report_drops_to(metrics.log_lines_dropped)
    if not app.config["METRICS_ENABLED"]:
        return metrics
    app.extensions["tokenpool.exporter"] = _export_http_metrics(app, registry)
    _track_requests(app, metrics)
    _track_database(app, metrics)
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(PoolCollector(app))
    app.extensions["tokenpool.metrics_registries"] = (registry, scrape)
    app.register_blueprint(bp)
    return metrics


@bp.get("/metrics")
@operation(
    "Prometheus metrics (bearer METRICS_TOKEN when configured)",
    tags=("operations",),
    answers={200: Answer("Prometheus text format", {"type": "string"}, "text/plain")},
    errors=(401,),
)
def metrics_endpoint():
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("A valid metrics bearer token is required.", reason="metrics_token")
    registry, scrape = current_app.extensions["tokenpool.metrics_registries"]
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        with metrics_storage.folder_lock(os.environ[metrics_storage.ENV], exclusive=False):
            body = generate_latest(registry)  # no dead worker half folded into the archive meanwhile
    else:
        body = generate_latest(registry)
    # content_type, not mimetype: CONTENT_TYPE_LATEST names its charset; Werkzeug adds one to a mimetype
    body += generate_latest(scrape)
    return Response(body, content_type=CONTENT_TYPE_LATEST)
