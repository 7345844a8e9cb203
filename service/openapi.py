"""The OpenAPI 3 document of the whole API, served at /openapi.json."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .monitoring.figures import RULES

bp = Blueprint("openapi", __name__)

# canonical text only (service/parsing.py): braces, urn:uuid: or spaces are a 400
UUID = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(code): {"$ref": f"#/components/responses/E{code}"} for code in codes}


USER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["user_id"],
                "properties": {"user_id": UUID},
            }
        }
    },
}
LEASE_ID = {
    **UUID,
    "description": "The lease's secret, given to the caller granted the lease (and shown to admin keys): "
    "release and renew by the holder must present it",
}
HOLDER_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["user_id", "lease_id"],
                "properties": {"user_id": UUID, "lease_id": UUID},
            }
        }
    },
}
TOKEN_ID = {"name": "token_id", "in": "path", "required": True, "schema": UUID}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}
CURSOR = {
    "name": "cursor",
    "in": "query",
    "description": "next_cursor of the previous page of this listing; any other value is a 400",
    "schema": {"type": "string", "maxLength": 256},
}
ADMIN = [{"ApiKey": []}, {"Bearer": []}]

SCHEMAS = {
    "Token": {
        "type": "object",
        "required": ["token_id", "state", "current_user_id", "activated_at", "expires_at", "released_at"],
        "properties": {
            "token_id": UUID,
            "state": {"type": "string", "enum": ["active", "available"]},
            "current_user_id": {**UUID, "nullable": True},
            "activated_at": NULLABLE_TIME,
            "expires_at": NULLABLE_TIME,
            "released_at": NULLABLE_TIME,
            "usage_count": {"type": "integer"},
            "lease_id": {
                **LEASE_ID,
                "description": "An active token's lease_id: only for admin keys, and in renew's answer",
            },
        },
    },
    "ApiIndex": {
        "type": "object",
        "required": ["service", "version", "lifetime_seconds", "links"],
        "properties": {
            "service": {"type": "string"},
            "version": {"type": "string"},
            "lifetime_seconds": {"type": "integer"},
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Lease": {
        "type": "object",
        "required": ["token_id", "user_id", "activated_at", "expires_at"],
        "properties": {
            "token_id": UUID,
            "user_id": UUID,
            "activated_at": TIME,
            "expires_at": TIME,
            "lease_id": {
                **LEASE_ID,
                "description": "On a new lease; absent when the user's running lease is returned "
                "again, unless the caller has an admin key",
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["usage_id", "user_id", "started_at", "ended_at", "end_reason"],
        "properties": {
            "usage_id": {"type": "integer"},
            "user_id": UUID,
            "started_at": TIME,
            "ended_at": NULLABLE_TIME,
            "end_reason": {
                "type": "string",
                "nullable": True,
                "enum": ["released", "expired", "evicted", "cleared", None],
            },
            "lease_id": {
                **LEASE_ID,
                "nullable": True,
                "description": "Only for admin keys (null for leases older than lease ids)",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["status", "error_code", "message", "error_id", "request_id", "timestamp", "details"],
        "properties": {
            "status": {"type": "string"},
            "error_code": {
                "type": "string",
                "enum": [
                    "VALIDATION_ERROR",
                    "INVALID_JSON",
                    "UNAUTHORIZED",
                    "FORBIDDEN",
                    "NOT_FOUND",
                    "METHOD_NOT_ALLOWED",
                    "CONFLICT",
                    "PAYLOAD_TOO_LARGE",
                    "UNSUPPORTED_MEDIA_TYPE",
                    "RATE_LIMITED",
                    "INTERNAL_ERROR",
                    "SERVICE_UNAVAILABLE",
                ],
            },
            "message": {"type": "string"},
            "error_id": UUID,
            "request_id": {"type": "string"},
            "timestamp": TIME,
            "details": {"type": "object"},
            "error": {"type": "string"},
            "retry_after": {"type": "integer"},
        },
    },
}

RESPONSES = {
    f"E{code}": _json(_ref("Error"), text)
    for code, text in {
        400: "Invalid input (VALIDATION_ERROR or INVALID_JSON)",
        401: "Missing or invalid API key",
        403: "The API key lacks the admin role",
        404: "Token not found",
        409: "The token is not active, is held by another user, or the lease_id is not its current lease's",
        413: "Request body too large",
        415: "Content-Type is not application/json",
        429: "Rate limit exceeded",
        503: "The database is unavailable",
    }.items()
}

COMMON = (413, 415, 429, 503)

PATHS = {
    "/api": {
        "get": {
            "summary": "The API's entry point: service, version, token lifetime and links",
            "operationId": "apiIndex",
            "responses": {"200": _json(_ref("ApiIndex"), "The index"), **_errors(429)},
        }
    },
    "/api/tokens/activate": {
        "post": {
            "summary": "Lease a token to a user (same token if the user already holds one)",
            "operationId": "activate",
            "requestBody": USER_BODY,
            "responses": {"200": _json(_ref("Lease"), "The lease"), **_errors(400, *COMMON)},
        }
    },
    "/api/tokens": {
        "get": {
            "summary": "List tokens, keyset-paginated by an opaque cursor",
            "operationId": "listTokens",
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["available", "active", "all"], "default": "all"},
                },
                LIMIT,
                CURSOR,
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["tokens", "next_cursor"],
                        "properties": {
                            "tokens": {"type": "array", "items": _ref("Token")},
                            "next_cursor": {"type": "string", "nullable": True},
                        },
                    },
                    "A page of tokens",
                ),
                **_errors(400, 429, 503),
            },
        }
    },
    "/api/tokens/summary": {
        "get": {
            "summary": "Pool counts",
            "operationId": "summary",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["total", "active", "available", "utilization", "lifetime_seconds"],
                        "properties": {
                            "total": {"type": "integer"},
                            "active": {"type": "integer"},
                            "available": {"type": "integer"},
                            "utilization": {"type": "number"},
                            "lifetime_seconds": {"type": "integer"},
                        },
                    },
                    "Counts",
                ),
                **_errors(429, 503),
            },
        }
    },
    "/api/tokens/active": {
        "delete": {
            "summary": "Release every active token (admin)",
            "operationId": "clearActive",
            "security": ADMIN,
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["cleared_count", "status"],
                        "properties": {"cleared_count": {"type": "integer"}, "status": {"type": "string"}},
                    },
                    "How many leases were cleared",
                ),
                **_errors(401, 403, 429, 503),
            },
        }
    },
    "/api/tokens/{token_id}": {
        "get": {
            "summary": "One token with its usage count",
            "operationId": "getToken",
            "parameters": [TOKEN_ID],
            "responses": {"200": _json(_ref("Token"), "The token"), **_errors(400, 404, 429, 503)},
        }
    },
    "/api/tokens/{token_id}/usages": {
        "get": {
            "summary": "The token's lease history, newest first",
            "operationId": "listUsages",
            "parameters": [TOKEN_ID, LIMIT, CURSOR],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["token_id", "usages", "next_cursor"],
                        "properties": {
                            "token_id": UUID,
                            "usages": {"type": "array", "items": _ref("Usage")},
                            "next_cursor": {"type": "string", "nullable": True},
                        },
                    },
                    "A page of usages",
                ),
                **_errors(400, 404, 429, 503),
            },
        }
    },
    "/api/tokens/{token_id}/release": {
        "post": {
            "summary": "End a lease: by its holder (user_id and lease_id), or by an admin (no body)",
            "operationId": "release",
            "parameters": [TOKEN_ID],
            "requestBody": {**HOLDER_BODY, "required": False},
            "responses": {
                "200": _json(_ref("Token"), "The released token"),
                **_errors(400, 401, 403, 404, 409, *COMMON),
            },
        }
    },
    "/api/tokens/{token_id}/renew": {
        "post": {
            "summary": "The holder (user_id and lease_id) extends the lease to now + lifetime",
            "operationId": "renew",
            "parameters": [TOKEN_ID],
            "requestBody": HOLDER_BODY,
            "responses": {
                "200": _json({"allOf": [_ref("Token"), {"required": ["lease_id"]}]}, "The renewed token"),
                **_errors(400, 404, 409, *COMMON),
            },
        }
    },
}


# --- /api/monitoring (admin) ------------------------------------------------------

WINDOW = {
    "name": "window",
    "in": "query",
    "description": "Minutes to look back over",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60},
}
RECENT_LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "How many of the most recent entries, newest first",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
SCOPE = {
    "type": "string",
    "enum": ["cluster", "process"],
    "description": "cluster: figures of every worker and instance (Redis); process: this process only",
}
LATENCY = {
    "type": "object",
    "description": "Upper bound (ms) of the histogram bucket holding each percentile; null without requests",
    "properties": {q: {"type": "number", "nullable": True} for q in ("p50", "p95", "p99")},
}
CACHE_STATS = {
    "type": "object",
    "properties": {
        "hits": {"type": "integer"},
        "misses": {"type": "integer"},
        "size": {"type": "integer"},
        "hit_rate": {"type": "number"},
        "ttl_seconds": {"type": "number"},
    },
}


def _monitoring(properties: dict, required: tuple[str, ...] = ()) -> dict:
    """A monitoring answer: its scope and time, plus these fields."""
    return {
        "type": "object",
        "required": ["scope", "generated_at", *required],
        "properties": {"scope": SCOPE, "generated_at": TIME, **properties},
    }


def _admin_get(summary: str, operation_id: str, schema: dict, parameters: list | None = None) -> dict:
    """An admin-only monitoring read; 400 only where there are parameters to get wrong."""
    operation = {"summary": summary, "operationId": operation_id, "security": ADMIN}
    if parameters:
        operation["parameters"] = parameters
    codes = (400, 401, 403, 429, 503) if parameters else (401, 403, 429, 503)
    operation["responses"] = {"200": _json(schema, summary), **_errors(*codes)}
    return {"get": operation}


def _recent_entries(key: str, entry: dict) -> dict:
    return _monitoring(
        {key: {"type": "array", "items": entry}, "limit": {"type": "integer"}}, required=(key, "limit")
    )


SCHEMAS["MonitoringEntry"] = {
    "type": "object",
    "description": "A recent slow request or error (statements carry no parameter values)",
    "properties": {
        "time": TIME,
        "duration_ms": {"type": "number"},
        "method": {"type": "string"},
        "route": {"type": "string", "description": "The route template, never the raw path"},
        "status": {"type": "integer"},
        "request_id": {"type": "string", "nullable": True},
        "error_id": {**UUID, "nullable": True},
        "error_code": {"type": "string", "nullable": True},
    },
}
SCHEMAS["SlowQuery"] = {
    "type": "object",
    "properties": {
        "time": TIME,
        "duration_ms": {"type": "number"},
        "statement": {"type": "string", "description": "SQL with placeholders, never parameter values"},
        "route": {"type": "string"},
        "request_id": {"type": "string", "nullable": True},
    },
}
SCHEMAS["Finding"] = {
    "type": "object",
    "required": ["rule", "severity", "figure", "threshold", "message", "recommendation"],
    "properties": {
        "rule": {"type": "string", "enum": list(RULES)},
        "severity": {"type": "string", "enum": ["critical", "warning", "info"]},
        "figure": {"type": "number", "nullable": True, "description": "The figure that triggered the rule"},
        "threshold": {"type": "number"},
        "message": {"type": "string"},
        "recommendation": {"type": "string"},
    },
}
SLEEP_HOOK = _admin_get(
    "Test hook: one deliberately slow `SELECT pg_sleep` (only with ENABLE_TEST_HOOKS, never in production)",
    "monitoringTestSleep",
    _monitoring({"slept_ms": {"type": "integer"}}, required=("slept_ms",)),
    [
        {
            "name": "ms",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
        }
    ],
)
SLEEP_HOOK["get"]["responses"]["404"] = _json(_ref("Error"), "Test hooks are switched off (the default)")

PATHS.update(
    {
        "/api/monitoring/metrics": _admin_get(
            "Requests, error rate, latency (overall and per route), token operations over a window",
            "monitoringMetrics",
            _monitoring(
                {
                    "window_minutes": {"type": "integer"},
                    "requests": {"type": "integer"},
                    "errors": {"type": "integer", "description": "5xx answers"},
                    "client_errors": {"type": "integer", "description": "4xx answers"},
                    "error_rate": {"type": "number", "description": "errors / requests"},
                    "latency_ms": LATENCY,
                    "routes": {
                        "type": "object",
                        "description": "Per route template, busiest first",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "requests": {"type": "integer"},
                                "errors": {"type": "integer"},
                                "error_rate": {"type": "number"},
                                "latency_ms": LATENCY,
                            },
                        },
                    },
                    "token_operations": {
                        "type": "object",
                        "description": "event -> success|failure -> reason -> count",
                    },
                    "rate_limit_hits": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "queries": {"type": "integer"},
                    "slow_queries": {"type": "integer"},
                    "slow_requests": {"type": "integer"},
                },
                required=("window_minutes", "requests", "error_rate", "latency_ms", "routes"),
            ),
            [WINDOW],
        ),
        "/api/monitoring/slow-queries": _admin_get(
            "The most recent statements slower than SLOW_QUERY_MS",
            "monitoringSlowQueries",
            _recent_entries("slow_queries", _ref("SlowQuery")),
            [RECENT_LIMIT],
        ),
        "/api/monitoring/slow-apis": _admin_get(
            "The most recent API requests slower than SLOW_REQUEST_MS",
            "monitoringSlowApis",
            _recent_entries("slow_apis", _ref("MonitoringEntry")),
            [RECENT_LIMIT],
        ),
        "/api/monitoring/errors": _admin_get(
            "The most recent API answers with a 4xx or 5xx status, with their error_id",
            "monitoringErrors",
            _recent_entries("errors", _ref("MonitoringEntry")),
            [RECENT_LIMIT],
        ),
        "/api/monitoring/report": _admin_get(
            "Summary, top issues and rule-based recommendations",
            "monitoringReport",
            _monitoring(
                {
                    "window_minutes": {"type": "integer"},
                    "summary": {
                        "type": "object",
                        "properties": {
                            "requests": {"type": "integer"},
                            "error_rate": {"type": "number"},
                            "p95_ms": {"type": "number", "nullable": True},
                            "pool_utilization": {"type": "number"},
                            "tokens_available": {"type": "integer"},
                            "last_sweep_at": NULLABLE_TIME,
                        },
                    },
                    "top_issues": {"type": "array", "items": {"type": "string"}},
                    "recommendations": {"type": "array", "items": _ref("Finding")},
                    "status": {"type": "string", "enum": ["ok", "attention"]},
                },
                required=("window_minutes", "summary", "top_issues", "recommendations", "status"),
            ),
            [{**WINDOW, "schema": {**WINDOW["schema"], "minimum": 2}}],
        ),
        "/api/monitoring/database-stats": _admin_get(
            "Tokens, usages, API keys, migration revision, database size and this process's connection pool",
            "monitoringDatabaseStats",
            _monitoring(
                {
                    "tokens": {
                        "type": "object",
                        "properties": {
                            "total": {"type": "integer"},
                            "active": {"type": "integer"},
                            "available": {"type": "integer"},
                            "utilization": {"type": "number"},
                        },
                    },
                    "usages": {
                        "type": "object",
                        "properties": {"total": {"type": "integer"}, "open": {"type": "integer"}},
                    },
                    "api_keys": {
                        "type": "object",
                        "properties": {"total": {"type": "integer"}, "active": {"type": "integer"}},
                    },
                    "migration_revision": {"type": "string"},
                    "database_size_bytes": {"type": "integer", "nullable": True},
                    "dialect": {"type": "string"},
                    "connection_pool": {
                        "type": "object",
                        "description": "The pool of the process that answered",
                        "properties": {
                            "pid": {"type": "integer"},
                            "kind": {"type": "string"},
                            "in_use": {"type": "integer", "nullable": True},
                            "idle": {"type": "integer", "nullable": True},
                            "max": {"type": "integer", "nullable": True},
                            "size": {"type": "integer", "nullable": True},
                            "checked_out": {"type": "integer", "nullable": True},
                            "overflow": {"type": "integer", "nullable": True},
                            "status": {"type": "string"},
                        },
                    },
                },
                required=("tokens", "usages", "api_keys", "migration_revision", "connection_pool"),
            ),
        ),
        "/api/monitoring/cache-stats": _admin_get(
            "Hits, misses, size and hit rate of this process's caches",
            "monitoringCacheStats",
            _monitoring(
                {
                    "caches": {
                        "type": "object",
                        "properties": {"health_report": CACHE_STATS, "api_keys": CACHE_STATS},
                    },
                    "note": {"type": "string"},
                },
                required=("caches",),
            ),
        ),
        "/api/monitoring/cache/clear": {
            "post": {
                "summary": "Empty this process's caches",
                "operationId": "monitoringCacheClear",
                "security": ADMIN,
                "responses": {
                    "200": _json(
                        _monitoring(
                            {
                                "status": {"type": "string"},
                                "cleared": {"type": "array", "items": {"type": "string"}},
                            },
                            required=("status", "cleared"),
                        ),
                        "The caches that were emptied",
                    ),
                    **_errors(401, 403, 429, 503),
                },
            }
        },
        "/api/monitoring/test/sleep": SLEEP_HOOK,
    }
)
for _reads_store in ("metrics", "slow-queries", "slow-apis", "errors", "report"):
    PATHS[f"/api/monitoring/{_reads_store}"]["get"]["responses"]["503"] = _json(
        _ref("Error"), "The database or the monitoring store (Redis) is unavailable"
    )


# --- operations endpoints: health probes, metrics, this document ---------------------

_PROBE_BODY = {"type": "object", "additionalProperties": True}


def _probe(summary: str, *, can_fail: bool) -> dict:
    responses = {"200": _json(_PROBE_BODY, "The probe passes (or, for /health, degraded)")}
    if can_fail:
        responses["503"] = _json(_PROBE_BODY, "The probe fails: the body names the failing checks")
    return {"get": {"summary": summary, "tags": ["health"], "responses": responses}}


for _path in ("/healthz", "/health/quick"):
    PATHS[_path] = _probe("Load balancer probe: the process serves; touches no dependency", can_fail=False)
for _path in ("/health/live", "/health/liveness", "/live"):
    PATHS[_path] = _probe("Liveness: no dependency checks", can_fail=False)
for _path in ("/health/ready", "/health/readiness", "/ready"):
    PATHS[_path] = _probe("Readiness: database, schema at head, pool seeded, not draining", can_fail=True)
PATHS["/health/startup"] = _probe("Start-up work done", can_fail=True)
for _path in ("/health", "/health/detailed"):
    PATHS[_path] = _probe("Detailed health: healthy, degraded (200) or unhealthy (503)", can_fail=True)
    PATHS[_path]["get"]["parameters"] = [
        {"name": "details", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}}
    ]
PATHS["/metrics"] = {
    "get": {
        "summary": "Prometheus metrics (bearer METRICS_TOKEN when configured)",
        "tags": ["operations"],
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_errors(401),
        },
    }
}
PATHS["/openapi.json"] = {
    "get": {
        "summary": "This document",
        "tags": ["operations"],
        "responses": {"200": _json({"type": "object"}, "The OpenAPI 3 document")},
    }
}


def document() -> dict:
    """The OpenAPI document; other blueprints add their paths to PATHS."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tokenpool",
            "version": current_app.config["APP_VERSION"],
            "description": "Lease a fixed pool of tokens. Every error answers in the Error shape.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
