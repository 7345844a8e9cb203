"""Health endpoints: status codes and bodies only; the checks live in checks.py."""

from __future__ import annotations

import threading
import time

from flask import current_app, jsonify, request

from ..errors import error_response
from ..timeutil import isoformat
from . import bp, checks
from .checks import DEGRADED, HEALTHY, UNHEALTHY

STARTED_AT = time.time()
_started = threading.Event()
_cache: dict = {"at": 0.0, "report": None}
_cache_lock = threading.Lock()
RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def _app():
    return current_app._get_current_object()


def _db_check() -> dict:
    app = _app()
    result = checks.timed_check(
        lambda: checks.database(checks.now()), app, app.config["HEALTH_CHECK_TIMEOUT"]
    )
    if result["status"] == HEALTHY:
        _started.set()
    return result


@bp.get("/healthz")
@bp.get("/health/quick")
def quick():
    return jsonify({"status": "ok"})


@bp.get("/health/live")
@bp.get("/health/liveness")
@bp.get("/live")
def live():
    return jsonify({"status": "alive", "uptime_seconds": round(time.time() - STARTED_AT, 1)})


@bp.get("/health/ready")
@bp.get("/health/readiness")
@bp.get("/ready")
def ready():
    found = {"draining": {"status": UNHEALTHY if checks.draining.is_set() else HEALTHY}}
    if not checks.draining.is_set():
        found["database"] = _db_check()
    failed = [name for name, check in found.items() if check["status"] == UNHEALTHY]
    if failed:
        return error_response(
            503,
            "SERVICE_UNAVAILABLE",
            f"Not ready: {', '.join(failed)}",
            details={"failed_checks": failed, "checks": _public(found)},
        )
    return jsonify({"status": "ready", "checks": _public(found)})


@bp.get("/health/startup")
def startup():
    if _started.is_set() or _db_check()["status"] == HEALTHY:
        return jsonify({"status": "started"})
    return error_response(503, "SERVICE_UNAVAILABLE", "Start-up has not finished: database not ready")


def _public(found: dict) -> dict:
    """Drop internal-only fields (the summary the database check carries along)."""
    return {
        name: {k: v for k, v in check.items() if k not in ("tokens", "last_sweep_at")}
        for name, check in found.items()
    }


def detailed_report() -> dict:
    """Run every check (each with its own timeout) and combine them; cached briefly."""
    app = _app()
    ttl = app.config["HEALTH_CACHE_SECONDS"]
    with _cache_lock:
        if _cache["report"] is not None and time.monotonic() - _cache["at"] < ttl:
            return _cache["report"]
        timeout = app.config["HEALTH_CHECK_TIMEOUT"]
        database = _db_check()
        found = {"database": database, "redis": checks.timed_check(checks.redis, app, timeout)}
        if database["status"] == HEALTHY:
            found["token_manager"] = checks.token_manager(database["last_sweep_at"], checks.now())
            found["tokens"] = checks.tokens(database["tokens"])
        else:
            found["token_manager"] = {"status": UNHEALTHY, "error": "database unavailable"}
            found["tokens"] = {"status": UNHEALTHY, "error": "database unavailable"}
        found["memory"] = checks.timed_check(checks.memory, app, timeout)
        found["disk"] = checks.timed_check(checks.disk, app, timeout)
        worst = max((c["status"] for c in found.values()), key=RANK.__getitem__)
        report = {
            "status": worst,
            "timestamp": isoformat(checks.now()),
            "version": app.config.get("APP_VERSION") or "0.1.0",
            "environment": app.config["APP_ENV"],
            "uptime_seconds": round(time.time() - STARTED_AT, 1),
            "checks": _public(found),
        }
        _cache.update(at=time.monotonic(), report=report)
        return report


def clear_cache() -> None:
    with _cache_lock:
        _cache.update(at=0.0, report=None)


@bp.get("/health")
@bp.get("/health/detailed")
def detailed():
    report = dict(detailed_report())
    if request.args.get("details") == "true":
        report["details"] = {
            "pool_size_configured": current_app.config["MAX_ACTIVE_TOKENS"],
            "lifetime_seconds": current_app.config["TOKEN_LIFETIME_SECONDS"],
            "check_interval_seconds": current_app.config["CHECK_INTERVAL_SECONDS"],
            "sweeper_in_process": "tokenpool.sweeper" in current_app.extensions,
        }
    if "application/health+json" in request.headers.get("Accept", ""):
        return _health_json(report)
    return jsonify(report), (503 if report["status"] == UNHEALTHY else 200)


IETF_STATUS = {HEALTHY: "pass", DEGRADED: "warn", UNHEALTHY: "fail"}
MEASUREMENT = {
    "database": "responseTime",
    "redis": "responseTime",
    "token_manager": "lastRun",
    "tokens": "utilization",
    "memory": "rss",
    "disk": "free",
}


def _health_json(report: dict):
    """The same facts in draft-inadarei-api-health-check format."""
    body = {
        "status": IETF_STATUS[report["status"]],
        "version": report["version"],
        "serviceId": "tokenpool",
        "checks": {},
    }
    for name, check in report["checks"].items():
        entry = {"status": IETF_STATUS[check["status"]], "time": report["timestamp"]}
        value = {
            "responseTime": check.get("latency_ms"),
            "lastRun": check.get("last_run_at"),
            "utilization": check.get("utilization"),
            "rss": check.get("rss_mb"),
            "free": check.get("free_mb"),
        }[MEASUREMENT[name]]
        if value is not None:
            entry["observedValue"] = value
        if "error" in check:
            entry["output"] = check["error"]
        body["checks"][f"{name}:{MEASUREMENT[name]}"] = [entry]
    response = jsonify(body)
    response.content_type = "application/health+json"
    response.status_code = 503 if report["status"] == UNHEALTHY else 200
    return response
