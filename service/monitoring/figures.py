"""Pure functions: aggregate per-minute buckets, and the report's rules."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from ..timeutil import isoformat
from .store import BOUNDS_MS


def percentile(histogram: dict[int, int], p: float) -> float | None:
    """The upper bound (ms) of the bucket holding the p-th percentile; None without data.

    The open-ended last bucket reports its lower bound (the largest finite bound).
    """
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = p * total, 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            bound = BOUNDS_MS[index]
            return bound if bound != float("inf") else BOUNDS_MS[-2]
    return BOUNDS_MS[-2]


def _latency(histogram: dict[int, int]) -> dict:
    return {f"p{q}": percentile(histogram, q / 100) for q in (50, 95, 99)}


def aggregate(buckets: list[Counter]) -> dict:
    """Sum a window's buckets into the figures the API answers."""
    total: Counter = Counter()
    for bucket in buckets:
        total.update(bucket)
    requests = total["requests"]
    overall: dict[int, int] = {}
    routes: dict[str, dict] = {}
    operations: dict[str, dict] = {}
    rate_limited: dict[str, int] = {}
    for field, n in total.items():
        parts = field.split("|")  # fields: lat|b, route|<rule>|n, route|<rule>|lat|b, op|..., rl|...
        if parts[0] == "lat":
            overall[int(parts[1])] = n
        elif parts[0] == "route":
            entry = routes.setdefault(parts[1], {"requests": 0, "errors": 0, "hist": {}})
            if parts[2] == "lat":
                entry["hist"][int(parts[3])] = n
            elif parts[2] == "n":
                entry["requests"] = n
            elif parts[2] == "errors":
                entry["errors"] = n
        elif parts[0] == "op":  # op|<event>|<status>|<reason>
            event, status, reason = parts[1], parts[2], parts[3]
            operations.setdefault(event, {}).setdefault(status, {})[reason] = n
        elif parts[0] == "rl":
            rate_limited[parts[1]] = n
    return {
        "requests": requests,
        "errors": total["errors"],
        "client_errors": total["client_errors"],
        "error_rate": round(total["errors"] / requests, 4) if requests else 0.0,
        "latency_ms": _latency(overall),
        "routes": {
            route: {
                "requests": e["requests"],
                "errors": e["errors"],
                "error_rate": round(e["errors"] / e["requests"], 4) if e["requests"] else 0.0,
                "latency_ms": _latency(e["hist"]),
            }
            for route, e in sorted(routes.items(), key=lambda kv: -kv[1]["requests"])
        },
        "token_operations": operations,
        "rate_limit_hits": rate_limited,
        "queries": total["queries"],
        "slow_queries": total["slow_queries"],
        "slow_requests": total["slow_requests"],
    }


# the console's chart: each series sums these bucket fields (op|<event>|<status>|<reason>)
ACTIVITY = {
    # a new lease: on a free token, on an expired one, by evicting the holder ("existing" is not
    # new), or granted to a queue's ticket
    "leases": (
        "op|activation|success|available",
        "op|activation|success|expired",
        "op|activation|success|evicted",
        "op|ticket|success|granted",
    ),
    "evictions": ("op|activation|success|evicted",),
    # a lease closed as expired: by the sweeper, or by the activation that took its token over
    "expiries": ("op|expiration|success|expired", "op|activation|success|expired"),
    # a full pool's refusals (reject and queue policies)
    "rejections": ("op|activation|failure|pool_exhausted", "op|activation|failure|queue_full"),
}


def activity(minutes: list[int], buckets: list[Counter]) -> list[dict]:
    """Per minute (oldest first): its start and the count of each ACTIVITY series."""
    return [
        {"minute": isoformat(datetime.fromtimestamp(minute * 60, UTC))}
        | {series: sum(bucket[f] for f in fields) for series, fields in ACTIVITY.items()}
        for minute, bucket in zip(minutes, buckets, strict=True)
    ]


# the rule names a finding can carry (documented in /openapi.json)
RULES = (
    "high_error_rate",
    "slow_p95",
    "slow_queries",
    "pool_utilization_high",
    "no_token_available",
    "sweeper_late",
    "rate_limit_hits_rising",
)


def _finding(rule, severity, figure, threshold, message, recommendation) -> dict:
    return {
        "rule": rule,
        "severity": severity,
        "figure": figure,
        "threshold": threshold,
        "message": message,
        "recommendation": recommendation,
    }


def evaluate(
    figures: dict,
    *,
    pool: dict | None,
    last_sweep_at: datetime | None,
    now: datetime,
    rate_limit_halves: tuple[int, int],
    config: dict,
) -> list[dict]:
    """The report's explicit rules; each finding carries the figure that triggered it."""
    findings = []
    if figures["requests"] and figures["error_rate"] > 0.05:
        findings.append(
            _finding(
                "high_error_rate",
                "critical",
                figures["error_rate"],
                0.05,
                f"{figures['error_rate']:.1%} of requests failed with a server error",
                "Look at /api/monitoring/errors and the ERROR log lines with those error_ids.",
            )
        )
    p95 = figures["latency_ms"]["p95"]
    if p95 is not None and p95 > config["SLOW_REQUEST_MS"]:
        findings.append(
            _finding(
                "slow_p95",
                "warning",
                p95,
                config["SLOW_REQUEST_MS"],
                f"p95 latency is {p95} ms",
                "Check /api/monitoring/slow-apis and slow-queries; check database load and pool use.",
            )
        )
    if figures["queries"]:
        share = figures["slow_queries"] / figures["queries"]
        if share > 0.01:
            findings.append(
                _finding(
                    "slow_queries",
                    "warning",
                    round(share, 4),
                    0.01,
                    f"{share:.1%} of statements were slower than {config['SLOW_QUERY_MS']} ms",
                    "Inspect /api/monitoring/slow-queries: locks, missing indexes, an overloaded database.",
                )
            )
    if pool is not None:
        if pool["total"] and pool["available"] == 0:
            findings.append(
                _finding(
                    "no_token_available",
                    "critical",
                    0,
                    1,
                    "No token is available: every activation evicts a lease",
                    "Raise MAX_ACTIVE_TOKENS and run `flask tokens seed`, or shorten TOKEN_LIFETIME_SECONDS.",
                )
            )
        elif pool["utilization"] > 0.9:
            findings.append(
                _finding(
                    "pool_utilization_high",
                    "warning",
                    pool["utilization"],
                    0.9,
                    f"The pool is {pool['utilization']:.0%} used",
                    "Plan more tokens (MAX_ACTIVE_TOKENS + `flask tokens seed`) before evictions start.",
                )
            )
    interval = config["CHECK_INTERVAL_SECONDS"]
    if last_sweep_at is None or now - last_sweep_at > timedelta(seconds=2 * interval):
        age = None if last_sweep_at is None else round((now - last_sweep_at).total_seconds())
        findings.append(
            _finding(
                "sweeper_late",
                "warning",
                age,
                2 * interval,
                "The token manager has not swept " + ("yet" if age is None else f"for {age} s"),
                "Check the workers' logs for sweep failures, or run `flask tokens sweep` from cron.",
            )
        )
    earlier, later = rate_limit_halves
    if later > earlier and later >= 10:
        findings.append(
            _finding(
                "rate_limit_hits_rising",
                "info",
                later,
                earlier,
                f"Rate-limit refusals rose from {earlier} to {later} between the window's halves",
                "Find the clients in the logs (event=rate_limited); raise their key's limits or ask them.",
            )
        )
    return findings
