"""What `/health?details=true` adds: memory against its limit, the caches, performance, the
connection pool, and every token pool's counts.

Each part is a plain function returning a dict; routes.py runs them with the
checks' timeout, so a slow Redis cannot hold a probe. All figures but
`performance` are this process's (each gunicorn worker answers for itself).
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
from flask import current_app
from sqlalchemy.pool import QueuePool

from .. import monitoring
from ..clock import token_time
from ..db import pool_limit, run_transaction
from ..extensions import db
from ..monitoring.figures import aggregate
from ..monitoring.store import window_minutes
from ..state import app_state
from .state import cache_stats

PERFORMANCE_WINDOW_MINUTES = 5
SLOWEST_ENDPOINTS = 5


def human_duration(seconds: float) -> str:
    """`93784.2` -> `"1d 2h 3m 4s"`: whole units, leading zero units left out; `"0s"` under a second."""
    remaining = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, remaining = divmod(remaining, size)
        if count or parts:
            parts.append(f"{count}{unit}")
    parts.append(f"{remaining}s")
    return " ".join(parts)


def _read_int(path: Path) -> int | None:
    """The integer in a cgroup file; None when missing, unreadable or "max" (no limit)."""
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[tuple[Path, str, str]]:
    """(folder, limit file, usage file) of this process's memory cgroup, v2 then v1, nested then root."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    found = []
    for line in lines:
        _hierarchy, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path"
            found += [(root / relative, "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):  # cgroup v1: "4:memory:/path"
            found += [(root / "memory" / relative, "memory.limit_in_bytes", "memory.usage_in_bytes")]
    # inside a container's cgroup namespace the path may not be mounted below root: try the root too
    found += [
        (root, "memory.max", "memory.current"),
        (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ]
    return found


def memory_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict:
    """The memory this process may use: its cgroup's limit if one is set, else the machine's memory.

    `{"limit_bytes", "limit_source": "cgroup" | "system", "cgroup_usage_bytes"}` (usage of the
    whole cgroup, every worker of the container; only with a cgroup limit). A cgroup "limit" at
    or above the machine's memory (cgroup v1 writes a huge number for "none") is no limit.
    """
    total = psutil.virtual_memory().total
    for folder, limit_file, usage_file in _cgroup_dirs(root, proc_cgroup):
        if not (folder / limit_file).exists():
            continue
        limit = _read_int(folder / limit_file)
        if limit is not None and limit < total:
            return {
                "limit_bytes": limit,
                "limit_source": "cgroup",
                "cgroup_usage_bytes": _read_int(folder / usage_file),
            }
        break  # this process's cgroup says "no limit": a parent's limit is not ours to guess
    return {"limit_bytes": total, "limit_source": "system"}


def memory() -> dict:
    """This process's RSS and its share of the memory limit (see `memory_limit`)."""
    rss = psutil.Process(os.getpid()).memory_info().rss
    limit = memory_limit()
    found = {
        "rss_bytes": rss,
        "rss_mb": round(rss / 2**20, 1),
        **limit,
        "limit_mb": round(limit["limit_bytes"] / 2**20, 1),
        "rss_percent_of_limit": round(100 * rss / limit["limit_bytes"], 2),
    }
    usage = limit.get("cgroup_usage_bytes")
    if usage is not None:
        found["cgroup_usage_percent_of_limit"] = round(100 * usage / limit["limit_bytes"], 2)
    return found


def caches() -> dict:
    """This process's caches (the health report, API-key lookups) and their sum.

    `{"health_report": stats, "api_keys": stats, "total": {"hits", "misses", "size", "hit_rate"}}`,
    each stats `{"hits", "misses", "size", "hit_rate", "ttl_seconds"}`.
    """
    found = {
        "health_report": cache_stats(),
        "api_keys": app_state().key_cache.stats(),
    }
    hits = sum(c["hits"] for c in found.values())
    misses = sum(c["misses"] for c in found.values())
    found["total"] = {
        "hits": hits,
        "misses": misses,
        "size": sum(c["size"] for c in found.values()),
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
    }
    return found


def performance(window: int = PERFORMANCE_WINDOW_MINUTES) -> dict:
    """The monitoring figures of the last `window` minutes: error rate, slow queries, slow endpoints.

    Cluster-wide with Redis (`scope: cluster`), else this process's (`scope: process`).
    `slow_endpoints`: routes whose p95 reached SLOW_REQUEST_MS, slowest first (at most 5).
    Raises RedisError when the cluster store is unreachable.
    """
    figures = aggregate(monitoring.store().buckets(window_minutes(window)))
    threshold = current_app.config["SLOW_REQUEST_MS"]
    slow = [
        {
            "route": route,
            "p95_ms": f["latency_ms"]["p95"],
            "requests": f["requests"],
            "error_rate": f["error_rate"],
        }
        for route, f in figures["routes"].items()
        if f["latency_ms"]["p95"] is not None and f["latency_ms"]["p95"] >= threshold
    ]
    slow.sort(key=lambda entry: -entry["p95_ms"])
    return {
        "scope": monitoring.store().scope,
        "window_minutes": window,
        "requests": figures["requests"],
        "errors": figures["errors"],
        "error_rate": figures["error_rate"],
        "p95_ms": figures["latency_ms"]["p95"],
        "queries": figures["queries"],
        "slow_queries": figures["slow_queries"],
        "slow_query_ms": current_app.config["SLOW_QUERY_MS"],
        "slow_requests": figures["slow_requests"],
        "slow_request_ms": threshold,
        "slow_endpoints": slow[:SLOWEST_ENDPOINTS],
    }


def pools() -> dict:
    """Every pool's size, policy and counts (total, active, available, queued, utilization) by name."""
    from ..pools.service import summaries  # the pools service imports the tokens domain, read only here

    return run_transaction(summaries, now=token_time())


def database_pool() -> dict:
    """This process's SQLAlchemy connection pool: `in_use`, `idle`, `max` (None: the pool has no bound).

    Also `size` (kept open) and `overflow` (beyond it), as SQLAlchemy's QueuePool counts them.
    """
    pool = db.engine.pool
    if not isinstance(pool, QueuePool):  # NullPool, StaticPool: nothing pooled to count
        return {"pid": os.getpid(), "kind": type(pool).__name__, "in_use": None, "idle": None, "max": None}
    return {
        "pid": os.getpid(),
        "kind": type(pool).__name__,
        "in_use": pool.checkedout(),
        "idle": pool.checkedin(),
        "max": pool_limit(pool),
        "size": pool.size(),
        "overflow": pool.overflow(),
    }
