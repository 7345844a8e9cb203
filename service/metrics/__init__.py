"""Prometheus metrics on /metrics: HTTP requests (prometheus-flask-exporter), token events, pool gauges.

Under gunicorn `PROMETHEUS_MULTIPROC_DIR` is set before start (gunicorn.conf.py
empties it), every worker writes its samples there, and a scrape of any worker
sums them all. Without it (flask run, tests) each app has a private registry.
Pool gauges are read from the database at scrape time, so every worker
reports the same truth.

    definitions.py  the service's own metrics, fed by token events (telemetry)
    http.py         request metrics (the exporter's names), fed by each request's observation
    database.py     statement latency and errors, pool connections by state (SQLAlchemy events)
    pool.py         the token pool gauges, read at scrape time
    endpoint.py     the exporter, serving /metrics
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from .. import metrics_storage
from ..log_shipping import report_drops_to
from ..state import app_state
from .database import track_database
from .definitions import TokenMetrics
from .endpoint import ensure_multiprocess_dir, serve_metrics
from .http import track_requests
from .pool import PoolCollector

__all__ = ["init_metrics"]


def init_metrics(app) -> TokenMetrics:
    """Create the app's metrics and subscribe them to telemetry; with METRICS_ENABLED, to every
    request's observation and the database's events, and serve /metrics (prometheus-flask-exporter).

    With `PROMETHEUS_MULTIPROC_DIR` set, raises ConfigError when that folder cannot
    be created or written, and makes the samples' files full-disk safe (metrics_storage).
    """
    if ensure_multiprocess_dir():
        metrics_storage.use_reserved_files()
    registry = CollectorRegistry(auto_describe=True)
    metrics = TokenMetrics(registry)
    state = app_state(app)
    state.metrics = metrics
    state.telemetry.subscribe(metrics.on_event)
    if app.config.get("LOGSTASH_HOST"):
        report_drops_to(metrics.log_lines_dropped)
    if not app.config["METRICS_ENABLED"]:
        return metrics
    state.exporter = serve_metrics(app, registry, PoolCollector(app))
    track_requests(app, metrics, registry)
    track_database(app, metrics)
    return metrics
