"""Optional OpenTelemetry tracing (`OTEL_ENABLED`): request and database spans, OTLP export.

Off by default and free when off: nothing is imported. The standard `OTEL_*`
variables (endpoint, headers, sampler) are read by the SDK itself. W3C
`traceparent` from callers is honoured by the Flask instrumentation. Database
spans come from the query observers (`service.db.observe_queries`), which see
every statement, also those run on a bare pooled connection outside SQLAlchemy.
"""

from __future__ import annotations

import sys
import time

from .db import observe_queries
from .extensions import db
from .route_table import route_table


def excluded_urls(app) -> str:
    """The instrumentation's `excluded_urls` (regexes searched in the full URL, comma-separated):
    exactly the routes whose class is not traced (service/route_table.py)."""
    pattern = route_table(app).path_pattern(lambda c: not c.traced)
    if pattern is None:
        return ""
    # the instrumentation searches the whole URL (scheme, host, path, query): anchor on the path
    return r"^[^:/?#]+://[^/?#]*" + pattern.removeprefix("^").removesuffix("$") + r"(?:\?|$)"


def init_tracing(app) -> None:
    """Instrument the app when `OTEL_ENABLED`; a test may pass `OTEL_TRACER_PROVIDER`."""
    if not app.config["OTEL_ENABLED"]:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    provider = app.config.get("OTEL_TRACER_PROVIDER") or _otlp_provider(app)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider, excluded_urls=excluded_urls(app))
    _trace_statements(app, provider)


def _trace_statements(app, provider) -> None:
    """A client span per statement, child of the request's span, timed as the statement ran."""
    from opentelemetry import trace

    tracer = trace.get_tracer("tokenpool.db", tracer_provider=provider)
    with app.app_context():
        system = db.engine.dialect.name

    def on_query(statement: str, seconds: float) -> None:
        ended = time.time_ns()
        span = tracer.start_span(
            statement.split(None, 1)[0].upper() if statement.strip() else "SQL",
            kind=trace.SpanKind.CLIENT,
            start_time=ended - int(seconds * 1e9),
            attributes={"db.system": system, "db.statement": statement[:2000]},
        )
        span.end(end_time=ended)

    observe_queries(app, on_query)


def _otlp_provider(app):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": app.config["OTEL_SERVICE_NAME"],
            "service.version": app.config["APP_VERSION"],
            "deployment.environment": app.config["APP_ENV"],
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the active span, if tracing is loaded and a span is recording."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
