"""The answers of /api/monitoring, described once for the OpenAPI document (never built from here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from ..openapi import Body, CanonicalUUID, absent
from .figures import RULES

WINDOW: dict[str, Any] = {
    "name": "window",
    "in": "query",
    "description": "Minutes to look back over",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60},
}
REPORT_WINDOW = {**WINDOW, "schema": {**WINDOW["schema"], "minimum": 2}}
RECENT_LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "How many of the most recent entries, newest first",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
SLEEP_MS = {
    "name": "ms",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
}


class Monitoring(Body):
    """Every monitoring answer: its scope and time."""

    scope: Literal["cluster", "process"] = Field(
        description="cluster: figures of every worker and instance (Redis); process: this process only"
    )
    generated_at: datetime


class Latency(Body):
    """Upper bound (ms) of the histogram bucket holding each percentile; null without requests."""

    p50: float | None = absent()
    p95: float | None = absent()
    p99: float | None = absent()


class RouteFigures(Body):
    """Figures of one route template over the window (latency in milliseconds)."""

    requests: int = absent()
    errors: int = absent()
    error_rate: float = absent()
    latency_ms: Latency = absent()


class MonitoringMetrics(Monitoring):
    """Requests, errors, latency (ms) and token operations over the last `window_minutes` minutes."""

    window_minutes: int
    requests: int
    errors: int = absent("5xx answers")
    client_errors: int = absent("4xx answers")
    error_rate: float = Field(description="errors / requests")
    latency_ms: Latency
    routes: dict[str, RouteFigures] = Field(description="Per route template, busiest first")
    token_operations: dict = absent("event -> success|failure -> reason -> count")
    rate_limit_hits: dict[str, int] = absent()
    queries: int = absent()
    slow_queries: int = absent()
    slow_requests: int = absent()


class MinuteActivity(Body):
    """One minute of the pools: its start, and what happened in it (the series of figures.ACTIVITY)."""

    minute: datetime = Field(description="The minute's start")
    leases: int = Field(description="New leases granted (an activation returning a running lease is not one)")
    evictions: int = Field(description="Leases ended by evicting their holder")
    expiries: int = Field(description="Leases closed as expired, by the sweeper or by an activation")
    rejections: int = Field(description="Activations refused because a pool was full")


class Activity(Monitoring):
    """Per-minute leases, evictions, expiries and rejections over the last `window_minutes` minutes."""

    window_minutes: int
    minutes: list[MinuteActivity] = Field(description="One per minute of the window, oldest first")


class MonitoringEntry(Body):
    """A recent slow request or error (statements carry no parameter values)."""

    time: datetime = absent()
    duration_ms: float = absent()
    method: str = absent()
    route: str = absent("The route template, never the raw path")
    status: int = absent()
    request_id: str | None = absent()
    error_id: CanonicalUUID | None = absent()
    error_code: str | None = absent()


class SlowQuery(Body):
    """A recent statement slower than SLOW_QUERY_MS (duration in milliseconds)."""

    time: datetime = absent()
    duration_ms: float = absent()
    statement: str = absent("SQL with placeholders, never parameter values")
    route: str = absent()
    request_id: str | None = absent()


class SlowQueries(Monitoring):
    """The most recent slow statements, newest first."""

    slow_queries: list[SlowQuery]
    limit: int


class SlowApis(Monitoring):
    """The most recent API requests slower than SLOW_REQUEST_MS, newest first."""

    slow_apis: list[MonitoringEntry]
    limit: int


class RecentErrors(Monitoring):
    """The most recent 4xx and 5xx answers, newest first."""

    errors: list[MonitoringEntry]
    limit: int


class Finding(Body):
    """One rule of the report that fired: its figure, its threshold and what to do."""

    rule: str = Field(json_schema_extra={"enum": list(RULES)})
    severity: Literal["critical", "warning", "info"]
    figure: float | None = Field(description="The figure that triggered the rule")
    threshold: float
    message: str
    recommendation: str


class ReportSummary(Body):
    """The report's headline figures (p95 in milliseconds, utilization 0..1)."""

    requests: int = absent()
    error_rate: float = absent()
    p95_ms: float | None = absent()
    pool_utilization: float = absent()
    tokens_available: int = absent()
    last_sweep_at: datetime | None = absent()


class Report(Monitoring):
    """Summary, top issues and recommendations; status attention when any rule fired."""

    window_minutes: int
    summary: ReportSummary
    top_issues: list[str]
    recommendations: list[Finding]
    status: Literal["ok", "attention"]


class PoolCounts(Body):
    """The pool's counts (utilization 0..1)."""

    total: int = absent()
    active: int = absent()
    available: int = absent()
    utilization: float = absent()


class UsageCounts(Body):
    """Lease history rows: all of them, and the open ones."""

    total: int = absent()
    open: int = absent()


class KeyCounts(Body):
    """API keys: all of them, and those not revoked."""

    total: int = absent()
    active: int = absent()


class ConnectionPool(Body):
    """The pool of the process that answered."""

    pid: int = absent()
    kind: str = absent()
    in_use: int | None = absent()
    idle: int | None = absent()
    max: int | None = absent()
    size: int | None = absent()
    checked_out: int | None = absent()
    overflow: int | None = absent()
    status: str = absent()


class NamedPoolCounts(PoolCounts):
    """One pool's settings that matter to an operator, and its counts."""

    size: int = absent()
    policy: str = absent()
    fencing_token: int = absent("The last fencing token granted in the pool")
    queued: int = absent()


class DatabaseStats(Monitoring):
    """Counts, schema revision, database size (bytes) and the answering process's connection pool."""

    tokens: PoolCounts = Field(description="The default pool's")
    pools: dict[str, NamedPoolCounts] = Field(description="Every pool by name")
    usages: UsageCounts
    api_keys: KeyCounts
    migration_revision: str
    database_size_bytes: int | None = absent()
    dialect: str = absent()
    connection_pool: ConnectionPool


class CacheFigures(Body):
    """One cache of this process (hit rate 0..1, ttl in seconds)."""

    hits: int = absent()
    misses: int = absent()
    size: int = absent()
    hit_rate: float = absent()
    ttl_seconds: float = absent()


class Caches(Body):
    """This process's caches."""

    health_report: CacheFigures = absent()
    api_keys: CacheFigures = absent()


class CacheStats(Monitoring):
    """Figures of the caches of the process that answered."""

    caches: Caches
    note: str = absent()


class CacheCleared(Monitoring):
    """The caches that were emptied."""

    status: str
    cleared: list[str]


class Slept(Monitoring):
    """How long the test hook's statement slept, in milliseconds."""

    slept_ms: int
