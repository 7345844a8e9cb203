"""The /metrics blueprint: bearer token, the multiprocess folder read under its lock, the pool gauges."""

from __future__ import annotations

import hmac
import os

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .. import metrics_storage
from ..errors import Unauthorized
from ..openapi import Answer, operation
from ..route_table import PROBE, declare
from ..state import app_state

bp = declare(Blueprint("metrics", __name__), PROBE)


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
    registries = app_state().metrics_registries
    assert registries is not None  # this blueprint is registered with them
    registry, scrape = registries
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
