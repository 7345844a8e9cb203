"""HTTP request metrics, all fed by each request's observation (service/observation.py).

prometheus-flask-exporter's metrics keep their names, labels and buckets
(`flask_http_request_duration_seconds{method,url_rule,status}`,
`flask_http_request_total{method,status}`,
`flask_http_request_exceptions_total{method,status}`, `flask_exporter_info{version}`),
but its own request hooks are off (`export_defaults=False`): they timed each
request a second time and resolved their label children by keyword on every
request, 30-66 us of CPU per `GET /api` measured in process
(docs/OBSERVABILITY.md). The observation's record feeds them instead, with
label children looked up once per process (`LabelCache`). API traffic only:
routes whose class is not `measured` (service/route_table.py) are not counted.
"""

from __future__ import annotations

from flask import request
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..labels import bounded_method
from ..observation import RequestRecord, observer
from .definitions import TokenMetrics

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class HttpMetrics:
    """The exporter's default request metrics, under its names, labels and help texts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "flask_http_request_duration_seconds",
            "Flask HTTP request duration in seconds",
            ["method", "url_rule", "status"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.total = Counter(
            "flask_http_request_total",
            "Total number of HTTP requests",
            ["method", "status"],
            registry=registry,
        )
        self.exceptions = Counter(
            "flask_http_request_exceptions_total",
            "Total number of HTTP requests which resulted in an exception",
            ["method", "status"],
            registry=registry,
        )


def track_requests(app, metrics: TokenMetrics, registry: CollectorRegistry) -> None:
    """Per API request: latency and count (the exporter's names), in flight, body size, slow requests.

    The method label is bounded (`labels.bounded_method`): a client choosing
    methods freely adds no series. Label children are looked up once per process
    (`LabelCache`): prometheus_client checks and stringifies label values and
    takes a lock on each `labels()` call.
    """
    http = HttpMetrics(registry)
    child, in_progress = metrics.child, metrics.in_progress

    def started(route_class) -> None:
        if route_class.measured:
            in_progress.inc()

    def observed(record: RequestRecord) -> None:
        if not record.route_class.measured:
            return
        method, status, route = bounded_method(record.method), record.status, record.route
        child(http.duration, method, route, status).observe(record.duration_ms / 1000)
        child(http.total, method, status).inc()
        if record.size is not None:
            child(metrics.response_size, route).observe(record.size)
        if record.slow:
            metrics.slow_requests.inc()  # the line: service/slow_log.py

    def finished(route_class, exc) -> None:
        if route_class.measured:
            in_progress.dec()
            if exc is not None:  # an exception no error handler answered (as the exporter counted)
                child(http.exceptions, bounded_method(request.method), 500).inc()

    observer(app).subscribe(started=started, observed=observed, finished=finished)
