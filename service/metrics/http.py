"""HTTP request metrics: prometheus-flask-exporter's, and ours fed by the request's observation."""

from __future__ import annotations

from flask import g, request
from prometheus_client import CollectorRegistry
from prometheus_flask_exporter import PrometheusMetrics

from ..labels import METHODS, OTHER
from ..observation import RequestRecord, observer
from ..route_table import route_table
from .definitions import TokenMetrics

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def url_rule(_request) -> str:
    """The exporter's `url_rule` label (it names the label after this function): the route
    template the request's observation looked up when it began."""
    return g.route


def export_http_metrics(app, registry: CollectorRegistry) -> PrometheusMetrics:
    """prometheus-flask-exporter's request metrics on `registry`, with a bounded method label.

    `flask_http_request_duration_seconds{method,url_rule,status}` (histogram),
    `flask_http_request_total{method,status}` and, for a request whose view
    raised, `flask_http_request_exceptions_total{method,status}`, plus
    `flask_exporter_info{version}`; API traffic only (`excluded_paths`: every route
    whose class is not measured, service/route_table.py). `/metrics` is served by
    `endpoint.metrics_endpoint` (bearer token, folder lock, pool gauges).

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
        excluded_paths=[route_table(app).path_pattern(lambda c: not c.measured)],
        defaults_prefix="flask",
        buckets=HTTP_BUCKETS,
    )
    app.after_request(restore)
    app.teardown_request(restore)
    exporter.init_app(app)
    app.after_request(bound)
    app.teardown_request(bound)
    return exporter


def track_requests(app, metrics: TokenMetrics) -> None:
    """Per API request, besides the exporter's latency and count: in flight, body size, slow requests.

    Label children are looked up once per process (`LabelCache`): prometheus_client
    checks and stringifies label values and takes a lock on each `labels()` call.
    """
    child, in_progress = metrics.child, metrics.in_progress

    def started(route_class) -> None:
        if route_class.measured:
            in_progress.inc()

    def observed(record: RequestRecord) -> None:
        if record.route_class.measured:
            if record.size is not None:
                child(metrics.response_size, record.route).observe(record.size)
            if record.slow:
                metrics.slow_requests.inc()  # the line: service/slow_log.py

    def finished(route_class) -> None:
        if route_class.measured:
            in_progress.dec()

    observer(app).subscribe(started=started, observed=observed, finished=finished)
