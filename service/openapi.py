"""The OpenAPI 3 document of the whole API, served at /openapi.json."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("openapi", __name__)

UUID = {"type": "string", "format": "uuid"}
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
TOKEN_ID = {"name": "token_id", "in": "path", "required": True, "schema": UUID}
LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}
CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"}}
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
        },
    },
    "Lease": {
        "type": "object",
        "required": ["token_id", "user_id", "activated_at", "expires_at"],
        "properties": {"token_id": UUID, "user_id": UUID, "activated_at": TIME, "expires_at": TIME},
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
        409: "The token is not active or is held by another user",
        413: "Request body too large",
        415: "Content-Type is not application/json",
        429: "Rate limit exceeded",
        503: "The database is unavailable",
    }.items()
}

COMMON = (413, 415, 429, 503)

PATHS = {
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
            "summary": "End a lease: by its holder (user_id), or by an admin (no body)",
            "operationId": "release",
            "parameters": [TOKEN_ID],
            "requestBody": {**USER_BODY, "required": False},
            "responses": {
                "200": _json(_ref("Token"), "The released token"),
                **_errors(400, 401, 403, 404, 409, *COMMON),
            },
        }
    },
    "/api/tokens/{token_id}/renew": {
        "post": {
            "summary": "The holder extends the lease to now + lifetime",
            "operationId": "renew",
            "parameters": [TOKEN_ID],
            "requestBody": USER_BODY,
            "responses": {
                "200": _json(_ref("Token"), "The renewed token"),
                **_errors(400, 404, 409, *COMMON),
            },
        }
    },
}


def document() -> dict:
    """The OpenAPI document; other blueprints add their paths to PATHS."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tokenpool",
            "version": current_app.config.get("APP_VERSION") or "0.1.0",
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
