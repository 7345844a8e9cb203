"""Optional tracing: a request gives a server span with a child database span; logs carry its trace id."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_app, reset_database
from tests.helpers import user

pytest.importorskip("opentelemetry.sdk")


def test_request_span_has_database_child_and_log_trace_id(postgres_url, tmp_path):
    # one traced app per process: SQLAlchemyInstrumentor instruments once, as in a real worker
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    log_path = tmp_path / "trace.log"
    app = make_app(
        postgres_url,
        OTEL_ENABLED=True,
        OTEL_TRACER_PROVIDER=provider,
        LOG_FILE=str(log_path),
        LOG_LEVEL="INFO",
    )
    reset_database(app)
    exporter.clear()
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = app.test_client().post(
        "/api/tokens/activate",
        json={"user_id": user()},
        headers={"traceparent": parent, "X-Request-ID": "traced-1"},
    )
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind.name == "SERVER"]
    assert len(server) == 1
    trace_id = server[0].context.trace_id
    assert format(trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"  # W3C traceparent honoured
    children = [s for s in spans if s.parent is not None and s.parent.span_id == server[0].context.span_id]
    assert any(s.attributes.get("db.system") for s in children), [s.name for s in spans]
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    access = next(x for x in lines if x.get("request_id") == "traced-1" and x["logger"] == "tokenpool.access")
    assert access["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_tracing_is_off_by_default(database_url):
    app = make_app(database_url)
    assert not app.config["OTEL_ENABLED"]
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
