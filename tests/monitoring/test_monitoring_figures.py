"""The pure parts of monitoring: `aggregate` over crafted buckets and every rule of `evaluate`."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from service.monitoring.figures import RULES as RULE_NAMES
from service.monitoring.figures import aggregate, evaluate, percentile
from service.monitoring.store import BOUNDS_MS, bucket_of, request_fields

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
CONFIG = {"SLOW_REQUEST_MS": 2000, "SLOW_QUERY_MS": 1000, "CHECK_INTERVAL_SECONDS": 30}
HEALTHY_POOL = {"total": 10, "active": 5, "available": 5, "utilization": 0.5}
RULES = set(RULE_NAMES)


def bucket(
    *requests: tuple[str, int, float], queries: int = 0, slow_queries: int = 0, **extra: int
) -> Counter:
    """One minute's bucket: the increments of these (route, status, duration_ms) requests."""
    counts: Counter = Counter()
    for route, status, duration_ms in requests:
        counts.update(request_fields(route, status, duration_ms))
    counts["queries"] += queries
    counts["slow_queries"] += slow_queries
    counts.update(extra)
    return counts


def healthy_figures(**changes) -> dict:
    """100 fast requests, no server error, 300 statements of which none slow."""
    figures = aggregate([bucket(*[("/api/tokens/summary", 200, 4.0)] * 100, queries=300)])
    figures.update(changes)
    return figures


def findings(figures=None, *, pool=HEALTHY_POOL, last_sweep_at=NOW - timedelta(seconds=10), halves=(0, 0)):
    return evaluate(
        figures if figures is not None else healthy_figures(),
        pool=pool,
        last_sweep_at=last_sweep_at,
        now=NOW,
        rate_limit_halves=halves,
        config=CONFIG,
    )


def only(found: list[dict]) -> dict:
    assert len(found) == 1, found
    assert set(found[0]) == {"rule", "severity", "figure", "threshold", "message", "recommendation"}
    assert found[0]["rule"] in RULES
    return found[0]


# --- aggregate -------------------------------------------------------------------


def test_bucket_bounds_are_inclusive_upper_bounds():
    assert bucket_of(0.3) == 0 and BOUNDS_MS[bucket_of(1)] == 1
    assert BOUNDS_MS[bucket_of(5)] == 5 and BOUNDS_MS[bucket_of(5.01)] == 10
    assert BOUNDS_MS[bucket_of(10_001)] == float("inf")


def test_percentiles_come_from_the_histogram():
    # 90 at 3 ms (<= 5), 8 at 40 ms (<= 50), 2 at 3000 ms (<= 5000)
    histogram = {bucket_of(3): 90, bucket_of(40): 8, bucket_of(3000): 2}
    assert percentile(histogram, 0.50) == 5
    assert percentile(histogram, 0.90) == 5
    assert percentile(histogram, 0.95) == 50
    assert percentile(histogram, 0.98) == 50
    assert percentile(histogram, 0.99) == 5000
    assert percentile({}, 0.5) is None
    # the open-ended bucket answers its lower bound, never infinity
    assert percentile({bucket_of(60_000): 3}, 0.99) == 10_000


def test_aggregate_sums_minutes_overall_and_per_route():
    minute_1 = bucket(
        *[("/api/tokens/summary", 200, 3.0)] * 60,
        *[("/api/tokens/activate", 200, 40.0)] * 8,
        ("/api/tokens/activate", 500, 3000.0),
        queries=100,
        slow_queries=2,
    )
    minute_2 = bucket(
        *[("/api/tokens/summary", 200, 3.0)] * 30,
        ("/api/tokens/activate", 400, 2.0),
        ("/api/tokens/activate", 503, 3000.0),
        ("/api/tokens/summary", 429, 0.5),
        queries=50,
        **{
            "op|activation|success|available": 7,
            "op|activation|success|evicted": 1,
            "op|activation|failure|invalid_input": 1,
            "op|expiration|success|-": 4,
        },
    )
    figures = aggregate([minute_1, Counter(), minute_2])
    assert figures["requests"] == 102
    assert figures["errors"] == 2  # 5xx only
    assert figures["client_errors"] == 2  # the 400 and the 429
    assert figures["error_rate"] == round(2 / 102, 4)
    assert figures["latency_ms"] == {"p50": 5, "p95": 50, "p99": 5000}
    assert figures["queries"] == 150 and figures["slow_queries"] == 2 and figures["slow_requests"] == 0
    assert figures["rate_limit_hits"] == {"refused": 1}
    assert figures["token_operations"] == {
        "activation": {"success": {"available": 7, "evicted": 1}, "failure": {"invalid_input": 1}},
        "expiration": {"success": {"-": 4}},
    }
    routes = figures["routes"]
    assert list(routes) == ["/api/tokens/summary", "/api/tokens/activate"]  # busiest first
    assert routes["/api/tokens/summary"] == {
        "requests": 91,
        "errors": 0,
        "error_rate": 0.0,
        "latency_ms": {"p50": 5, "p95": 5, "p99": 5},
    }
    assert routes["/api/tokens/activate"] == {
        "requests": 11,
        "errors": 2,
        "error_rate": round(2 / 11, 4),
        "latency_ms": {"p50": 50, "p95": 5000, "p99": 5000},
    }


def test_aggregate_of_nothing():
    figures = aggregate([Counter(), Counter()])
    assert figures["requests"] == 0 and figures["error_rate"] == 0.0
    assert figures["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert figures["routes"] == {} and figures["token_operations"] == {}


# --- evaluate: quiet when healthy, each rule on crafted figures ---------------------


def test_healthy_figures_raise_nothing():
    assert findings() == []
    # right at every threshold is still healthy
    at_limits = healthy_figures(error_rate=0.05, slow_queries=3)  # 3/300 = 1 %
    edge_pool = {"total": 10, "active": 9, "available": 1, "utilization": 0.9}
    sweep = NOW - timedelta(seconds=60)  # 2 x CHECK_INTERVAL_SECONDS
    assert findings(at_limits, pool=edge_pool, last_sweep_at=sweep, halves=(10, 10)) == []
    assert findings(pool=None, halves=(0, 9)) == []  # few refusals: not a trend


def test_high_error_rate():
    figures = aggregate([bucket(*[("/a", 200, 1.0)] * 94, *[("/a", 500, 1.0)] * 6)])
    found = only(findings(figures))
    assert (found["rule"], found["severity"], found["figure"], found["threshold"]) == (
        "high_error_rate",
        "critical",
        0.06,
        0.05,
    )
    assert "6.0%" in found["message"]


def test_slow_p95():
    figures = aggregate([bucket(*[("/a", 200, 1.0)] * 90, *[("/a", 200, 2400.0)] * 10)])
    found = only(findings(figures))
    assert (found["rule"], found["figure"], found["threshold"]) == ("slow_p95", 2500, 2000)
    at_threshold = aggregate([bucket(*[("/a", 200, 1.0)] * 90, *[("/a", 200, 900.0)] * 10)])
    assert findings(at_threshold) == []  # p95 = 1000 ms


def test_slow_queries_share():
    found = only(findings(healthy_figures(queries=300, slow_queries=6)))
    assert (found["rule"], found["figure"], found["threshold"]) == ("slow_queries", 0.02, 0.01)
    assert "1000 ms" in found["message"]


def test_pool_utilization_high():
    pool = {"total": 20, "active": 19, "available": 1, "utilization": 0.95}
    found = only(findings(pool=pool))
    assert (found["rule"], found["severity"], found["figure"], found["threshold"]) == (
        "pool_utilization_high",
        "warning",
        0.95,
        0.9,
    )


def test_no_token_available_replaces_utilization():
    pool = {"total": 10, "active": 10, "available": 0, "utilization": 1.0}
    found = only(findings(pool=pool))
    assert (found["rule"], found["severity"], found["figure"], found["threshold"]) == (
        "no_token_available",
        "critical",
        0,
        1,
    )


def test_sweeper_late():
    found = only(findings(last_sweep_at=NOW - timedelta(seconds=61)))
    assert (found["rule"], found["figure"], found["threshold"]) == ("sweeper_late", 61, 60)
    never = only(findings(last_sweep_at=None))
    assert (never["rule"], never["figure"]) == ("sweeper_late", None)
    assert "yet" in never["message"]


@pytest.mark.parametrize("halves", [(2, 12), (0, 10)])
def test_rate_limit_hits_rising(halves):
    found = only(findings(halves=halves))
    assert (found["rule"], found["severity"], found["figure"], found["threshold"]) == (
        "rate_limit_hits_rising",
        "info",
        halves[1],
        halves[0],
    )


def test_every_rule_at_once():
    figures = aggregate([bucket(*[("/a", 500, 3000.0)] * 10, queries=10, slow_queries=5)])
    pool = {"total": 10, "active": 10, "available": 0, "utilization": 1.0}
    found = findings(figures, pool=pool, last_sweep_at=None, halves=(1, 50))
    assert {f["rule"] for f in found} == RULES - {"pool_utilization_high"}
