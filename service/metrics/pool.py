"""The pool gauges, read from the database when Prometheus scrapes (every worker reports the same truth)."""

from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..clock import token_time
from ..db import bounded_connection
from ..retention import oldest_kept
from ..timeutil import as_utc
from ..tokens import reads
from ..tokens.queue import queue_lengths

log = logging.getLogger("tokenpool.metrics")


class PoolCollector(Collector):
    """Pool gauges read from the database when Prometheus scrapes."""

    def __init__(self, app) -> None:
        self.app = app

    def collect(self):
        """The pool gauges, each queue pool's length and tokenpool_database_up, read at scrape time."""
        up = GaugeMetricFamily("tokenpool_database_up", "1 when the database answered the scrape")
        families = {
            "total": GaugeMetricFamily("tokenpool_pool_size", "Tokens in the pool"),
            "active": GaugeMetricFamily("tokenpool_tokens_active", "Tokens leased right now"),
            "available": GaugeMetricFamily("tokenpool_tokens_available", "Tokens free right now"),
        }
        oldest = GaugeMetricFamily(
            "tokenpool_retention_oldest_timestamp_seconds",
            "Unix time of the oldest row kept, by table (usages: its start; events: its time)",
            labels=["table"],
        )
        queued = GaugeMetricFamily(
            "tokenpool_queue_length", "Waiting tickets of each queue pool", labels=["pool"]
        )
        try:
            with self.app.app_context(), bounded_connection() as conn:
                counts = reads.summary(conn)
                kept = oldest_kept(conn)
                lengths = queue_lengths(conn, token_time(self.app))
            for name, family in families.items():
                family.add_metric([], counts[name])
            for table, at in kept.items():
                if at is not None:
                    oldest.add_metric([table], as_utc(at).timestamp())
            for pool, length in sorted(lengths.items()):
                queued.add_metric([pool], length)
            up.add_metric([], 1)
            yield from families.values()
            yield oldest
            yield queued
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("pool gauges unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
        yield up
