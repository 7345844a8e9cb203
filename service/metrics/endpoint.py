"""/metrics, served by prometheus-flask-exporter: its endpoint, with the gauges read at scrape time.

The exporter registers the view (`register_endpoint`, its documented way for a
gunicorn deployment that serves metrics on the application's own port) and
chooses the exposition format from the scraper's `Accept` header (OpenMetrics
for Prometheus, text for `curl` and `promtool`). What we add goes through its
public extension points:

- `metrics_decorator`: the `METRICS_TOKEN` bearer check and the route's OpenAPI contract;
- `generate_metrics`, overridden by `ScrapeExporter`: the exporter reads either
  its registry (one process) or the multiprocess folder (gunicorn) and nothing
  else, so the gauges read from the database at scrape time (`PoolCollector`)
  are added beside them, and the folder is read under its shared lock (the
  master never folds a dead worker's files into the archive halfway through a
  scrape: service/metrics_storage.py). tests/protection/test_library_tripwires.py
  fails if the exporter's view stops calling it.

Under the Flask reloader (`flask run --debug`) the exporter serves no /metrics
unless `DEBUG_METRICS=1` (its own rule).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import os
import re
from collections.abc import Iterator

from flask import Flask, current_app, make_response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics

from .. import metrics_storage
from ..authentication import bearer_token, record_auth_failure
from ..errors import Unauthorized
from ..openapi import Answer, operation
from ..route_table import PROBE, route_table

PATH = "/metrics"


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


class Named(Collector):
    """The samples of `source` whose names are in `names`, in their families.

    What prometheus_client's `restricted_registry` does, without needing the
    names at registration (the multiprocess folder's collector declares none,
    so a restricted registry over it is empty).
    """

    def __init__(self, source: Collector, names: set[str]) -> None:
        self.source, self.names = source, names

    def collect(self) -> Iterator[Metric]:
        """Each family of `source` that keeps a sample, with only the samples named."""
        for family in self.source.collect():
            samples = [s for s in family.samples if s.name in self.names]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


class ScrapeExporter(PrometheusMetrics):
    """prometheus-flask-exporter whose scrape adds `scrape_time` (a collector read at scrape time)."""

    def __init__(self, app=None, *, scrape_time: Collector, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.scrape_time = scrape_time

    def generate_metrics(self, accept_header=None, names=None):
        """The scrape's body and content type (as the exporter's own, with the scrape-time gauges).

        `accept_header` chooses the format (prometheus_client's `choose_encoder`:
        OpenMetrics when asked for, else text 0.0.4); `names` keeps only those
        samples (the exporter's `name[]` query parameter: `Named`). Returns
        `(body: str, content type: str)`.
        """
        folder = os.environ.get(metrics_storage.ENV)
        everything = CollectorRegistry(auto_describe=False)
        if folder:
            MultiProcessCollector(everything)
        else:
            everything.register(self.registry)
        everything.register(self.scrape_time)
        registry = everything
        if names:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(Named(everything, set(names)))
        encode, content_type = choose_encoder(accept_header)
        # a dead worker's files are never half folded into the archive while they are read
        with metrics_storage.folder_lock(folder, exclusive=False) if folder else contextlib.nullcontext():
            return encode(registry).decode(), content_type


NAMES = {
    "name": "name[]",
    "in": "query",
    "description": "keep only the samples of these names (the exporter's filter)",
    "schema": {"type": "array", "items": {"type": "string"}},
    "style": "form",
    "explode": True,
}


def _scrape_guard(view):
    """The exporter's `metrics_decorator`: the bearer token when `METRICS_TOKEN` is set, `Vary:
    Accept` (the format follows it), the contract."""

    @operation(
        "Prometheus metrics (bearer METRICS_TOKEN when configured)",
        tags=("operations",),
        parameters=(NAMES,),
        answers={
            200: Answer(
                "Prometheus text format (OpenMetrics when asked for)", {"type": "string"}, "text/plain"
            )
        },
        errors=(401,),
    )
    @functools.wraps(view)
    def guarded():
        token = current_app.config.get("METRICS_TOKEN")
        presented = bearer_token()
        if token and not hmac.compare_digest((presented or "").encode(), token.encode()):
            record_auth_failure("metrics_token", guess=presented is not None)  # a wrong one is charged
            raise Unauthorized("A valid metrics bearer token is required.", reason="metrics_token")
        response = make_response(view())
        response.vary.add("Accept")
        return response

    return guarded


def serve_metrics(app: Flask, registry: CollectorRegistry, scrape_time: Collector) -> ScrapeExporter:
    """prometheus-flask-exporter on `registry`, serving /metrics on `app`; returns it.

    Its own request hooks are off (`export_defaults=False`: service/metrics/http.py
    feeds its metric names from each request's observation). Its
    `excluded_paths` (used by any metric its decorators add) are the routes the
    route table does not count as API traffic, and /metrics itself, which the
    table classes as a probe (not limited, plain HTTP, not traced, not counted).
    """
    table = route_table(app)
    unmeasured = table.path_pattern(lambda c: not c.measured)
    exporter = ScrapeExporter.for_app_factory(
        scrape_time=scrape_time,
        path=PATH,
        registry=registry,
        export_defaults=False,
        excluded_paths=[p for p in (unmeasured, f"^{re.escape(PATH)}$") if p],
        metrics_decorator=_scrape_guard,
    )
    exporter.init_app(app)  # registers the endpoint (`register_endpoint`)
    for rule in app.url_map.iter_rules():
        if rule.rule == PATH:
            table.declare_endpoint(rule.endpoint, PROBE)
    exporter.info(
        "flask_exporter_info", "Information about the Prometheus Flask exporter", version=exporter.version
    )
    return exporter
