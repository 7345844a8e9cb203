"""Health endpoints: status codes and bodies only; the checks live in checks.py."""

from __future__ import annotations

import logging
import time

from flask import current_app, jsonify, request

from .. import clock
from ..errors import error_response
from ..openapi import Answer, operation
from ..state import app_state
from ..timeutil import isoformat
from . import bp, checks, details
from . import state as health_state
from .checks import DEGRADED, HEALTHY, UNHEALTHY
from .state import HealthState

STARTED_AT = time.time()
RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
INTERNAL_FIELDS = ("tokens", "last_sweep_at", "failed_check")


@bp.record_once
def _attach_state(setup_state) -> None:
    health_state.attach(setup_state.app)


@bp.after_request
def _no_store(response):
    """Probe answers describe this instant: no proxy or client may cache them."""
    response.headers["Cache-Control"] = "no-store"
    return response


def _uptime() -> dict:
    """`uptime_seconds` of this process, and the same as `uptime_human` ("1d 2h 3m 4s")."""
    seconds = round(time.time() - STARTED_AT, 1)  # both fields from one rounded reading: they agree
    return {"uptime_seconds": seconds, "uptime_human": details.human_duration(seconds)}


def _app():
    return current_app._get_current_object()  # type: ignore[attr-defined]  # the app, not its proxy


def _state() -> HealthState:
    return app_state().health


def _database_check():
    return checks.database(clock.now())


def _db_check() -> dict:
    app = _app()
    return _note_started(checks.timed_check(_database_check, app, app.config["HEALTH_CHECK_TIMEOUT"]))


def _note_started(database: dict) -> dict:
    if database["status"] == HEALTHY:
        _state().started.set()
    return database


PROBE = {"type": "object", "additionalProperties": True}
PASSES = Answer("The probe passes (or, for /health, degraded)", PROBE)
FAILS = Answer("The probe fails: the body names the failing checks", PROBE)


@bp.get("/healthz")
@bp.get("/health/quick")
@operation(
    "Load balancer probe: the process serves; touches no dependency", tags=("health",), answers={200: PASSES}
)
def quick():
    return jsonify({"status": "ok"})


@bp.get("/health/live")
@bp.get("/health/liveness")
@bp.get("/live")
@operation("Liveness: no dependency checks", tags=("health",), answers={200: PASSES})
def live():
    return jsonify({"status": "alive", **_uptime()})


@bp.get("/health/ready")
@bp.get("/health/readiness")
@bp.get("/ready")
@operation(
    "Readiness: database, schema at head, pool seeded, not draining",
    tags=("health",),
    answers={200: PASSES, 503: FAILS},
)
def ready():
    found = {"draining": {"status": UNHEALTHY if checks.draining.is_set() else HEALTHY}}
    if not checks.draining.is_set():
        database = _db_check()
        failing = database.get("failed_check")  # "schema" or "pool": the database itself answered
        if failing:
            found["database"] = {"status": HEALTHY, "latency_ms": database["latency_ms"]}
            found[failing] = {k: v for k, v in database.items() if k != "latency_ms"}
        else:
            found["database"] = database
    failed = [name for name, check in found.items() if check["status"] == UNHEALTHY]
    if failed:
        return error_response(
            503,
            "SERVICE_UNAVAILABLE",
            f"Not ready: {', '.join(failed)}",
            details={"failed_checks": failed, "checks": _public(found)},
            log_level=logging.WARNING,
        )
    return jsonify({"status": "ready", "checks": _public(found)})


@bp.get("/health/startup")
@operation("Start-up work done", tags=("health",), answers={200: PASSES, 503: FAILS})
def startup():
    if _state().started.is_set():
        return jsonify({"status": "started"})
    database = _db_check()
    if database["status"] == HEALTHY:
        return jsonify({"status": "started"})
    failing = database.get("failed_check", "database")
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        f"Start-up has not finished: {failing} not ready",
        details={"failed_checks": [failing], "checks": _public({failing: database})},
        log_level=logging.WARNING,
    )


def _public(found: dict) -> dict:
    """Drop internal-only fields (the summary the database check carries along)."""
    return {
        name: {k: v for k, v in check.items() if k not in INTERNAL_FIELDS} for name, check in found.items()
    }


def _starting_since(app, state: HealthState):
    """When this app was built, while it is younger than one sweeper interval; else None."""
    if time.monotonic() - state.built_monotonic < app.config["CHECK_INTERVAL_SECONDS"]:
        return state.built_at
    return None


def detailed_report() -> dict:
    """Run every check (each with its own timeout) and combine them; cached briefly."""
    app = _app()
    ttl = app.config["HEALTH_CACHE_SECONDS"]
    state = _state()
    app_state(app).generation.sync()  # may drop the report (a cache clear elsewhere)
    with state.lock:
        if state.report is not None and time.monotonic() - state.at < ttl:
            state.hits += 1
            return state.report
        state.misses += 1
        found = checks.run_checks(
            {
                "database": _database_check,
                "redis": checks.redis,
                "memory": checks.memory,
                "disk": checks.disk,
                "log_files": checks.log_files,
                "metrics_folder": checks.metrics_folder,
            },
            app,
            app.config["HEALTH_CHECK_TIMEOUT"],
        )
        database = _note_started(found["database"])
        if database["status"] == HEALTHY:
            found["token_manager"] = checks.token_manager(
                database["last_sweep_at"], clock.now(), starting_since=_starting_since(app, state)
            )
            found["tokens"] = checks.tokens(database["tokens"])
        else:
            found["token_manager"] = {"status": UNHEALTHY, "error": "database unavailable"}
            found["tokens"] = {"status": UNHEALTHY, "error": "database unavailable"}
        worst = max((c["status"] for c in found.values()), key=RANK.__getitem__)
        report = {
            "status": worst,
            "timestamp": isoformat(clock.now()),
            "version": app.config["APP_VERSION"],
            "environment": app.config["APP_ENV"],
            **_uptime(),
            "checks": _public(found),
        }
        state.at, state.report = time.monotonic(), report
        return report


DETAIL_PARTS = {
    "memory": details.memory,
    "cache": details.caches,
    "performance": details.performance,
    "database_pool": details.database_pool,
}
# read after the others: run beside them it would hold a connection while database_pool counts them
LATER_PARTS = {"pools": details.pools}


def _detail_parts() -> dict:
    """The parts `?details=true` adds, each under the checks' timeout; a part that fails shows its error.

    Not cached with the report: asked for by a human, not by a stampede of probes.
    """
    app = _app()
    timeout = app.config["HEALTH_CHECK_TIMEOUT"]
    found = checks.run_checks(DETAIL_PARTS, app, timeout) | checks.run_checks(LATER_PARTS, app, timeout)
    shown = {}
    for name, part in found.items():
        part.pop("latency_ms", None)
        shown[name] = {"error": part["error"]} if "error" in part else part
    return shown


@bp.get("/health")
@bp.get("/health/detailed")
@operation(
    "Detailed health: healthy, degraded (200) or unhealthy (503)",
    tags=("health",),
    parameters=({"name": "details", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}},),
    answers={200: PASSES, 503: FAILS},
)
def detailed():
    report = dict(detailed_report())
    if request.args.get("details") == "true":
        report["details"] = {
            "pool_size_configured": current_app.config["MAX_ACTIVE_TOKENS"],
            "lifetime_seconds": current_app.config["TOKEN_LIFETIME_SECONDS"],
            "check_interval_seconds": current_app.config["CHECK_INTERVAL_SECONDS"],
            "sweeper_in_process": app_state().sweeper is not None,
            **_detail_parts(),
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
    "log_files": "free",
    "metrics_folder": "free",
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
