"""The service's own Prometheus metrics: tokens, sweeper, limiter, auth, logs, database, HTTP extras."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..telemetry import TokenEvent


class LabelCache:
    """`metric.labels(*values)`, remembered per process.

    prometheus_client checks and stringifies the values and takes a lock on
    every `labels()` call (~2 us); the child it returns never changes.
    """

    def __init__(self) -> None:
        self._children: dict[tuple, object] = {}

    def __call__(self, metric, *values):
        """`metric.labels(*values)`, created once per metric and values."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:  # values are bounded (labels.py); a guard all the same
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child


class TokenMetrics:
    """The business metrics of one app, fed by telemetry events and hooks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.child = LabelCache()
        self.activations = Counter(
            "tokenpool_activations_total",
            "Activations by result, reason and pool (rejections: result failure, reason pool_exhausted)",
            ["result", "reason", "pool"],
            registry=r,
        )
        self.releases = Counter(
            "tokenpool_releases_total", "Leases ended, by reason and pool", ["reason", "pool"], registry=r
        )
        self.failures = Counter(
            "tokenpool_token_operation_failures_total",
            "Failed token operations by operation and reason",
            ["operation", "reason"],
            registry=r,
        )
        self.durations = Histogram(
            "tokenpool_token_operation_duration_seconds",
            "Token operation duration",
            ["operation"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.event_streams = Gauge(
            "tokenpool_event_streams_open",
            "Event streams held open (short answers not counted), over live workers",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pruned = Counter(
            "tokenpool_retention_pruned_total",
            "Rows deleted past their retention, by table (usages, tickets, events)",
            ["table"],
            registry=r,
        )
        self.sweeper_runs = Counter(
            "tokenpool_sweeper_runs_total", "Token manager runs by result", ["result"], registry=r
        )
        self.sweeper_last_run = Gauge(
            "tokenpool_sweeper_last_run_timestamp_seconds",
            "Unix time of the last successful sweep by this service",
            registry=r,
            multiprocess_mode="max",
        )
        self.tickets = Counter(
            "tokenpool_tickets_total",
            "Tickets of queue pools by outcome (queued, granted, cancelled, expired) and pool",
            ["outcome", "pool"],
            registry=r,
        )
        self.ticket_wait = Histogram(
            "tokenpool_ticket_wait_seconds",
            "How long a granted ticket waited, from queued to granted",
            ["pool"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.hand_over_delay = Histogram(
            "tokenpool_queue_hand_over_delay_seconds",
            "From the end of a lease (expiry or release) to its token's grant to the head of the queue",
            ["pool", "after"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30),
            registry=r,
        )
        self.rate_limit_hits = Counter(
            "tokenpool_rate_limit_hits_total", "Requests refused by a rate limit", ["limit"], registry=r
        )
        self.rate_limit_fallbacks = Counter(
            "tokenpool_rate_limit_storage_fallbacks_total",
            "Times the limiter fell back to in-memory storage because Redis failed",
            registry=r,
        )
        self.auth_failures = Counter(
            "tokenpool_auth_failures_total", "Rejected API key attempts by reason", ["reason"], registry=r
        )
        self.log_lines_dropped = Counter(
            "tokenpool_log_lines_dropped_total",
            "Log lines not shipped to LOGSTASH_HOST, by reason (queue_full, collector_down)",
            ["reason"],
            registry=r,
        )
        self.exceptions = Counter(
            "tokenpool_unhandled_exceptions_total", "Unexpected exceptions by type", ["type"], registry=r
        )
        self.slow_requests = Counter(
            "tokenpool_slow_requests_total", "Requests slower than SLOW_REQUEST_MS", registry=r
        )
        self.slow_queries = Counter(
            "tokenpool_slow_queries_total", "Statements slower than SLOW_QUERY_MS", registry=r
        )
        self.query_duration = Histogram(
            "tokenpool_db_query_duration_seconds",
            "Database statement duration",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.pool_checked_out = Gauge(
            "tokenpool_db_pool_checked_out_connections",
            "Database connections in use, summed over live workers",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_connections = Gauge(
            "tokenpool_db_pool_connections",
            "Database connections of the workers' pools by state (in_use, idle, max), over live workers",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.db_errors = Counter(
            "tokenpool_db_errors_total",
            "Database errors by operation (the statement's verb, connect, or other)",
            ["operation"],
            registry=r,
        )
        self.in_progress = Gauge(
            "tokenpool_http_requests_in_progress",
            "API requests being served",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.response_size = Histogram(
            "tokenpool_http_response_size_bytes",
            "API response body size",
            ["url_rule"],
            buckets=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
            registry=r,
        )

    def on_event(self, e: TokenEvent) -> None:
        """Telemetry subscriber: one token event, its counters.

        The `pool` label is the pool's name when the pool exists (a success, a full queue, a
        rejection), else "": a name in a URL is client input until found.
        """
        child = self.child
        if e.duration_ms is not None:
            child(self.durations, e.event).observe(e.duration_ms / 1000)
        if e.status == "failure":
            child(self.failures, e.event, e.reason or "unknown").inc()
            if e.event == "activation":
                pool = (e.pool or "") if e.reason in ("pool_exhausted", "queue_full") else ""
                child(self.activations, "failure", e.reason or "unknown", pool).inc()
            elif e.event == "manager_check":
                child(self.sweeper_runs, "failure").inc()
            return
        pool = e.pool or ""
        if e.event == "activation":
            child(self.activations, "success", e.reason or "available", pool).inc()
            if e.reason in ("evicted", "expired"):
                child(self.releases, e.reason, pool).inc()
        elif e.event in ("release", "expiration"):
            child(self.releases, e.reason or "released", pool).inc(e.count)
        elif e.event == "prune":
            child(self.pruned, e.reason).inc(e.count)
        elif e.event == "manager_check":
            child(self.sweeper_runs, "success").inc()
            self.sweeper_last_run.set(time.time())
        elif e.event == "ticket":
            child(self.tickets, e.reason or "unknown", pool).inc(e.count)
            if e.waited_seconds is not None:
                child(self.ticket_wait, pool).observe(e.waited_seconds)
            if e.hand_over_seconds is not None and e.after in ("expiry", "release"):
                child(self.hand_over_delay, pool, e.after).observe(e.hand_over_seconds)
