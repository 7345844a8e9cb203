"""Dependency checks: plain functions returning a status dict, run with timeouts."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading
import time
from datetime import timedelta

import psutil
import redis as redis_lib
from alembic.script import ScriptDirectory
from flask import current_app
from flask_migrate import Migrate
from sqlalchemy import inspect, text

from .. import metrics_storage
from ..db import bounded_connection
from ..deadline import DeadlineExceeded
from ..log_files import configured_files, write_failures
from ..redis_connect import redis_client
from ..timeutil import isoformat
from ..tokens import reads, service

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
draining = threading.Event()  # set on SIGTERM: readiness fails, liveness holds
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")
_head_revision: dict[str, str | None] = {}


def run_checks(named: dict, app, timeout: float) -> dict[str, dict]:
    """Run each `check()` inside `app` in its own thread, all at once; one deadline for all.

    A check that raises or overruns is unhealthy; each result gets its latency_ms.
    """
    start = time.perf_counter()

    def run(check):
        with app.app_context():
            result = check()
        result["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return result

    futures = {name: _executor.submit(run, check) for name, check in named.items()}
    results = {}
    for name, future in futures.items():
        remaining = max(0.0, timeout - (time.perf_counter() - start))
        try:
            results[name] = future.result(timeout=remaining)
        except concurrent.futures.TimeoutError:
            results[name] = {"status": UNHEALTHY, "error": f"timed out after {timeout:g}s"}
        except Exception as exc:  # a failing dependency is a finding, not a crash
            timed_out = isinstance(getattr(exc, "orig", exc), DeadlineExceeded)  # its own deadline ended it
            error = f"timed out after {timeout:g}s" if timed_out else type(exc).__name__
            results[name] = {"status": UNHEALTHY, "error": error}
        results[name].setdefault("latency_ms", round((time.perf_counter() - start) * 1000, 2))
    return results


def timed_check(check, app, timeout: float) -> dict:
    """One check run as `run_checks` runs it."""
    return run_checks({"check": check}, app, timeout)["check"]


def head_revision() -> str | None:
    """The newest migration revision shipped with this code."""
    directory = current_app.extensions["migrate"].directory
    if directory not in _head_revision:
        config = Migrate().get_config(directory)
        _head_revision[directory] = ScriptDirectory.from_config(config).get_current_head()
    return _head_revision[directory]


def database(now=None) -> dict:
    """The database answers, the schema is at head and the pool is seeded.

    Every wait is bounded by HEALTH_CHECK_TIMEOUT (at most DB_DEADLINE_SECONDS),
    so a frozen database ends the check instead of leaving its thread stuck.
    Raises DatabaseStalled at once while the database is known to be stalled.
    """
    config = current_app.config
    with bounded_connection(min(config["HEALTH_CHECK_TIMEOUT"], config["DB_DEADLINE_SECONDS"])) as conn:
        conn.execute(text("SELECT 1"))
        if not inspect(conn).has_table("alembic_version"):
            return {
                "status": UNHEALTHY,
                "failed_check": "schema",
                "error": "schema is not migrated (run flask db upgrade)",
            }
        current = conn.scalar(text("SELECT version_num FROM alembic_version"))
        head = head_revision()
        if current != head:
            return {
                "status": UNHEALTHY,
                "failed_check": "schema",
                "error": "schema is not at the migration head",
                "schema_revision": current,
                "head_revision": head,
            }
        counts = reads.summary(conn, now=now)
        last_sweep = service.last_sweep_at(conn)
    if counts["total"] == 0:
        return {
            "status": UNHEALTHY,
            "failed_check": "pool",
            "error": "token pool is not seeded (run flask tokens seed)",
            "schema_revision": current,
        }
    return {"status": HEALTHY, "schema_revision": current, "tokens": counts, "last_sweep_at": last_sweep}


def token_manager(last_sweep, now, *, starting_since=None) -> dict:
    """Healthy while the last sweep (by any worker) is younger than a few intervals.

    `starting_since`: when this process started, while it is still starting up
    (younger than one interval). The sweeper sweeps at start, so until then a
    sweep missing since the start is not a finding: the check is healthy with
    `starting: true`. Later, never run is degraded and stalled is unhealthy.
    """
    interval = current_app.config["CHECK_INTERVAL_SECONDS"]
    limit = timedelta(seconds=interval * current_app.config["SWEEPER_STALE_INTERVALS"])
    found = {"last_run_at": isoformat(last_sweep), "interval_seconds": interval}
    if starting_since is not None and (last_sweep is None or last_sweep < starting_since):
        return {"status": HEALTHY, "starting": True, **found}
    if last_sweep is None:
        status = DEGRADED  # never ran yet: a fresh deployment
    elif now - last_sweep > limit:
        status = UNHEALTHY
    else:
        status = HEALTHY
    return {"status": status, **found}


def tokens(counts: dict) -> dict:
    """Pool use; degraded above 90 % utilization or with none available."""
    degraded = counts["available"] == 0 or counts["utilization"] > 0.9
    return {"status": DEGRADED if degraded else HEALTHY, **counts}


def redis() -> dict:
    """Redis: healthy when it answers PING (or none is configured), degraded when not (never unhealthy)."""
    url = current_app.config.get("REDIS_URL")
    if not url:
        return {"status": HEALTHY, "configured": False}
    client = redis_client(url, current_app.config, timeout=1)
    try:
        client.ping()
    except redis_lib.RedisError as exc:
        return {"status": DEGRADED, "configured": True, "error": type(exc).__name__}
    finally:
        client.close()
    return {"status": HEALTHY, "configured": True}


def memory() -> dict:
    """This process's resident memory in MiB against MEMORY_LIMIT_MB: degraded above it."""
    rss_mb = psutil.Process(os.getpid()).memory_info().rss / 2**20
    limit = current_app.config["MEMORY_LIMIT_MB"]
    return {"status": DEGRADED if rss_mb > limit else HEALTHY, "rss_mb": round(rss_mb, 1), "limit_mb": limit}


def free_space(path: str, *, min_free_ratio: float = 0.05, min_free_bytes: int = 0) -> dict:
    """Free space of the file system holding `path` (a file or folder, created or not).

    A path that does not exist yet is measured at its nearest existing parent.
    Degraded when less than `min_free_ratio` of the file system or fewer than
    `min_free_bytes` bytes are free. Shape: {"status", "free_mb", "free_ratio"};
    an unreadable file system is degraded with an "error" (the exception's name).
    No host path in the result: health reports are not for them.
    """
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"status": DEGRADED, "error": type(exc).__name__}
    free_ratio = usage.free / usage.total if usage.total else 0.0
    full = free_ratio < min_free_ratio or usage.free < min_free_bytes
    return {
        "status": DEGRADED if full else HEALTHY,
        "free_mb": usage.free // 2**20,
        "free_ratio": round(free_ratio, 4),
    }


def log_files() -> dict:
    """The file systems the log files are on, and the lines this process failed to write there.

    Degraded when one of them is (nearly) full (`free_space`) or a line failed
    to be written in the last minute. Files are named by their setting, never
    by their host path. Shape: {"status", "configured", "free_mb" (the least of
    them), "files": {setting: {"status", "free_mb", "free_ratio", "lost_lines"?, "last_error"?}}}.
    """
    files = configured_files(current_app.config)
    if not files:
        return {"status": HEALTHY, "configured": False}
    found = {}
    for name, path in files.items():
        entry = free_space(path)
        failed = write_failures(path)
        if failed:
            entry.update(lost_lines=failed["lost"], last_error=failed["error"])
            if failed["seconds_ago"] < 60:
                entry["status"] = DEGRADED
        found[name] = entry
    degraded = any(entry["status"] != HEALTHY for entry in found.values())
    report = {"status": DEGRADED if degraded else HEALTHY, "configured": True, "files": found}
    free = [entry["free_mb"] for entry in found.values() if "free_mb" in entry]
    if free:
        report["free_mb"] = min(free)  # the fullest of them
    return report


def disk() -> dict:
    """The instance folder's file system (or the working folder's when it has none)."""
    return free_space(current_app.instance_path if os.path.isdir(current_app.instance_path) else ".")


def metrics_folder() -> dict:
    """The Prometheus multiprocess folder: room on its file system, and every sample stored.

    Degraded below `metrics_storage.MIN_FREE_BYTES` (or 5 %) free, or once a sample
    of this process could not be written (it is then missing from /metrics).
    """
    directory = os.environ.get(metrics_storage.ENV)
    if not directory:
        return {"status": HEALTHY, "configured": False}
    result = {"configured": True, **free_space(directory, min_free_bytes=metrics_storage.MIN_FREE_BYTES)}
    error = metrics_storage.storage_error()
    if error:
        result.update(status=DEGRADED, error=f"samples kept in memory only: {error}")
    return result
