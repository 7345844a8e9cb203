"""Database metrics: statement latency, slow statements, errors by operation, pool connections by state."""

from __future__ import annotations

from sqlalchemy import event

from ..db import observe_queries, pool_limit
from ..extensions import db
from ..labels import OTHER
from .definitions import TokenMetrics

DB_OPERATIONS = frozenset(
    ("select", "insert", "update", "delete", "begin", "commit", "rollback", "set", "lock")
)


def db_operation(statement: str | None) -> str:
    """The label of a failed database call: `connect` without a statement, else its verb
    (`select`, `insert`, `update`, `delete`, `begin`, `commit`, `rollback`, `set`, `lock`), else `other`."""
    if statement is None:
        return "connect"
    verb = statement.lstrip().split(None, 1)[0].lower() if statement.strip() else ""
    return verb if verb in DB_OPERATIONS else OTHER


def track_database(app, metrics: TokenMetrics) -> None:
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
