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
    requests: int = absent()
    errors: int = absent()
    error_rate: float = absent()
    latency_ms: Latency = absent()


class MonitoringMetrics(Monitoring):
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
    time: datetime = absent()
    duration_ms: float = absent()
    statement: str = absent("SQL with placeholders, never parameter values")
    route: str = absent()
    request_id: str | None = absent()


class SlowQueries(Monitoring):
    slow_queries: list[SlowQuery]
    limit: int


class SlowApis(Monitoring):
    slow_apis: list[MonitoringEntry]
    limit: int


class RecentErrors(Monitoring):
    errors: list[MonitoringEntry]
    limit: int


class Finding(Body):
    rule: str = Field(json_schema_extra={"enum": list(RULES)})
    severity: Literal["critical", "warning", "info"]
    figure: float | None = Field(description="The figure that triggered the rule")
    threshold: float
    message: str
    recommendation: str


class ReportSummary(Body):
    requests: int = absent()
    error_rate: float = absent()
    p95_ms: float | None = absent()
    pool_utilization: float = absent()
    tokens_available: int = absent()
    last_sweep_at: datetime | None = absent()


class Report(Monitoring):
    window_minutes: int
    summary: ReportSummary
    top_issues: list[str]
    recommendations: list[Finding]
    status: Literal["ok", "attention"]


class PoolCounts(Body):
    total: int = absent()
    active: int = absent()
    available: int = absent()
    utilization: float = absent()


class UsageCounts(Body):
    total: int = absent()
    open: int = absent()


class KeyCounts(Body):
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


class DatabaseStats(Monitoring):
    tokens: PoolCounts
    usages: UsageCounts
    api_keys: KeyCounts
    migration_revision: str
    database_size_bytes: int | None = absent()
    dialect: str = absent()
    connection_pool: ConnectionPool


class CacheFigures(Body):
    hits: int = absent()
    misses: int = absent()
    size: int = absent()
    hit_rate: float = absent()
    ttl_seconds: float = absent()


class Caches(Body):
    health_report: CacheFigures = absent()
    api_keys: CacheFigures = absent()


class CacheStats(Monitoring):
    caches: Caches
    note: str = absent()


class CacheCleared(Monitoring):
    status: str
    cleared: list[str]


class Slept(Monitoring):
    slept_ms: int
