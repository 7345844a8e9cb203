"""HTTP for /api/monitoring: validate parameters, read figures, answer with their scope."""

from __future__ import annotations

from flask import current_app, jsonify
from redis import RedisError
from sqlalchemy import func, select, text

from ..apikeys.service import api_keys
from ..authentication import require_admin
from ..clock import token_time
from ..db import run_transaction
from ..errors import NotFound, ValidationError, error_response
from ..extensions import db
from ..health import details as health_details
from ..health import state as health_state
from ..invalidation import bump_now
from ..models import TokenUsage
from ..openapi import Answer, Error, operation
from ..parsing import int_arg
from ..pools.service import summaries as pool_summaries
from ..state import app_state
from ..timeutil import isoformat, utcnow
from ..tokens import reads
from ..tokens import service as tokens
from . import bp, store
from .figures import activity as activity_series
from .figures import aggregate, evaluate
from .schemas import (
    RECENT_LIMIT,
    REPORT_WINDOW,
    SLEEP_MS,
    WINDOW,
    Activity,
    CacheCleared,
    CacheStats,
    DatabaseStats,
    MonitoringMetrics,
    RecentErrors,
    Report,
    Slept,
    SlowApis,
    SlowQueries,
)
from .store import window_minutes

usages = TokenUsage.__table__
STORE_DOWN = Answer("The database or the monitoring store (Redis) is unavailable", Error)


def admin_read(summary: str, operation_id: str, answer: type, *parameters: dict, reads_store: bool = False):
    """The contract of an admin-only monitoring read; 400 only where there are parameters to get wrong."""
    answers = {200: Answer(summary, answer)}
    if reads_store:
        answers[503] = STORE_DOWN
    return operation(
        summary,
        operation_id=operation_id,
        admin=True,
        parameters=parameters,
        answers=answers,
        errors=((400,) if parameters else ()) + (401, 403, 429, 503),
    )


@bp.before_request
def _admin_only():
    require_admin()


@bp.errorhandler(RedisError)
def _store_unavailable(exc):
    """Redis down is a dependency outage (503), not an unexpected error of ours (500)."""
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        "The monitoring store (Redis) is unavailable. Please retry shortly.",
        exc_info=exc,
    )


def _answer(body: dict):
    return jsonify({"scope": store().scope, "generated_at": isoformat(utcnow())} | body)


def _window_figures(window: int) -> dict:
    return aggregate(store().buckets(window_minutes(window)))


@bp.get("/metrics")
@admin_read(
    "Requests, error rate, latency (overall and per route), token operations over a window",
    "monitoringMetrics",
    MonitoringMetrics,
    WINDOW,
    reads_store=True,
)
def metrics():
    window = int_arg("window", 60, 1, 1440)
    return _answer({"window_minutes": window} | _window_figures(window))


@bp.get("/activity")
@admin_read(
    "Leases, evictions, expiries and rejections per minute over a window (the console's chart)",
    "monitoringActivity",
    Activity,
    WINDOW,
    reads_store=True,
)
def activity():
    """Leases, evictions, expiries and rejections per minute (the console's chart): no database read."""
    window = int_arg("window", 60, 1, 1440)
    minutes = window_minutes(window)
    return _answer({"window_minutes": window, "minutes": activity_series(minutes, store().buckets(minutes))})


def _recent(kind: str, key: str):
    limit = int_arg("limit", 10, 1, 100)
    return _answer({key: store().recent(kind, limit), "limit": limit})


@bp.get("/slow-queries")
@admin_read(
    "The most recent statements slower than SLOW_QUERY_MS",
    "monitoringSlowQueries",
    SlowQueries,
    RECENT_LIMIT,
    reads_store=True,
)
def slow_queries():
    return _recent("slow_queries", "slow_queries")


@bp.get("/slow-apis")
@admin_read(
    "The most recent API requests slower than SLOW_REQUEST_MS",
    "monitoringSlowApis",
    SlowApis,
    RECENT_LIMIT,
    reads_store=True,
)
def slow_apis():
    return _recent("slow_requests", "slow_apis")


@bp.get("/errors")
@admin_read(
    "The most recent API answers with a 4xx or 5xx status, with their error_id",
    "monitoringErrors",
    RecentErrors,
    RECENT_LIMIT,
    reads_store=True,
)
def errors():
    return _recent("errors", "errors")


@bp.get("/test/sleep")
@operation(
    "Test hook: one deliberately slow `SELECT pg_sleep` (only with ENABLE_TEST_HOOKS, never in production)",
    operation_id="monitoringTestSleep",
    admin=True,
    parameters=(SLEEP_MS,),
    answers={
        200: Answer("The statement slept", Slept),
        404: Answer("Test hooks are switched off (the default)", Error),
    },
    errors=(400, 401, 403, 429, 503),
)
def test_sleep():
    """Test hook (ENABLE_TEST_HOOKS, never in production): one deliberately slow statement."""
    if not current_app.config["ENABLE_TEST_HOOKS"]:
        raise NotFound("The requested URL was not found.")
    ms = int_arg("ms", 100, 1, 10000)
    if db.engine.dialect.name != "postgresql":
        raise ValidationError("The sleep hook needs PostgreSQL.")
    # the budget covers the sleep: the hook stands for slow work, not for a stalled database
    budget = ms / 1000 + current_app.config["DB_DEADLINE_SECONDS"]
    run_transaction(
        lambda conn: conn.execute(text("SELECT pg_sleep(:s)"), {"s": ms / 1000}), budget_seconds=budget
    )
    return _answer({"slept_ms": ms})


@bp.get("/report")
@admin_read(
    "Summary, top issues and rule-based recommendations",
    "monitoringReport",
    Report,
    REPORT_WINDOW,
    reads_store=True,
)
def report():
    window = int_arg("window", 60, 2, 1440)
    minutes = window_minutes(window)
    buckets = store().buckets(minutes)
    figures = aggregate(buckets)
    half = len(buckets) // 2
    halves = (
        aggregate(buckets[:half])["rate_limit_hits"].get("refused", 0),
        aggregate(buckets[half:])["rate_limit_hits"].get("refused", 0),
    )
    now = token_time()
    pool = run_transaction(reads.summary, now=now)
    last_sweep = run_transaction(tokens.last_sweep_at)
    findings = evaluate(
        figures,
        pool=pool,
        last_sweep_at=last_sweep,
        now=now or utcnow(),
        rate_limit_halves=halves,
        config=current_app.config,
    )
    order = {"critical": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f["severity"]])
    return _answer(
        {
            "window_minutes": window,
            "summary": {
                "requests": figures["requests"],
                "error_rate": figures["error_rate"],
                "p95_ms": figures["latency_ms"]["p95"],
                "pool_utilization": pool["utilization"],
                "tokens_available": pool["available"],
                "last_sweep_at": isoformat(last_sweep),
            },
            "top_issues": [f["message"] for f in findings[:5]],
            "recommendations": findings,
            "status": "attention" if findings else "ok",
        }
    )


def _database_size(conn) -> int | None:
    if conn.dialect.name == "postgresql":
        return conn.scalar(text("SELECT pg_database_size(current_database())"))
    if conn.dialect.name == "sqlite":
        return conn.scalar(text("PRAGMA page_count")) * conn.scalar(text("PRAGMA page_size"))
    return None


def _database_stats(conn) -> dict:
    open_usages = func.count().filter(usages.c.ended_at.is_(None))
    total_usages, open_count = conn.execute(select(func.count(), open_usages).select_from(usages)).one()
    keys_total, keys_active = conn.execute(
        select(func.count(), func.count().filter(api_keys.c.revoked_at.is_(None))).select_from(api_keys)
    ).one()
    return {
        "tokens": reads.summary(conn, now=token_time()),
        "pools": pool_summaries(conn, now=token_time()),
        "usages": {"total": total_usages, "open": open_count},
        "api_keys": {"total": keys_total, "active": keys_active},
        "migration_revision": conn.scalar(text("SELECT version_num FROM alembic_version")),
        "database_size_bytes": _database_size(conn),
        "dialect": conn.dialect.name,
    }


@bp.get("/database-stats")
@admin_read(
    "Tokens, usages, API keys, migration revision, database size and this process's connection pool",
    "monitoringDatabaseStats",
    DatabaseStats,
)
def database_stats():
    stats = run_transaction(_database_stats)
    pool = health_details.database_pool()
    # checked_out: the name this answer had before in_use, kept for its readers
    pool.update(checked_out=pool["in_use"], status=db.engine.pool.status())
    stats["connection_pool"] = pool
    return _answer(stats)


@bp.get("/cache-stats")
@admin_read("Hits, misses, size and hit rate of this process's caches", "monitoringCacheStats", CacheStats)
def cache_stats():
    caches = health_details.caches()
    return _answer({"caches": caches, "note": "per process: each worker keeps its own caches"})


@bp.post("/cache/clear")
@operation(
    "Empty this process's caches",
    operation_id="monitoringCacheClear",
    admin=True,
    answers={200: Answer("The caches that were emptied", CacheCleared)},
    errors=(401, 403, 429, 503),
)
def cache_clear():
    """This process's caches now; every other worker and instance's within invalidation.CHECK_SECONDS."""
    bump_now()
    health_state.clear_cache()
    app_state().key_cache.clear()
    return _answer({"status": "ok", "cleared": sorted(set(health_details.caches()) - {"total"})})
