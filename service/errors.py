"""The one JSON error shape, the ApiError family, and the app-wide handlers."""

from __future__ import annotations

import logging
import traceback
import uuid

from flask import current_app, g, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import HTTP_STATUS_CODES

from .state import app_state
from .timeutil import isoformat, utcnow

log = logging.getLogger("tokenpool.errors")

# error_code for werkzeug's own exceptions (unknown route, wrong method, ...)
HTTP_ERROR_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}

HTTP_MESSAGES = {
    404: "The requested URL was not found.",
    405: "The method is not allowed for the requested URL.",
    413: "Request body too large.",
    415: "Content-Type must be application/json.",
}


class ApiError(HTTPException):
    """An error with a stable `error_code`, a message for humans and optional details."""

    code = 400
    error_code = "VALIDATION_ERROR"
    response_headers: dict = {}  # noqa: RUF012 - read-only default; subclasses set their own

    def __init__(self, message: str, *, details: dict | None = None, reason: str | None = None):
        super().__init__(description=message)
        self.message = message
        self.details = details or {}
        self.reason = reason or self.error_code.lower()  # for telemetry: why it failed


class ValidationError(ApiError):
    """400 VALIDATION_ERROR: a field, parameter or cursor the contract does not accept."""

    code, error_code = 400, "VALIDATION_ERROR"


class InvalidJson(ApiError):
    """400 INVALID_JSON: a body that is not valid JSON."""

    code, error_code = 400, "INVALID_JSON"


class Unauthorized(ApiError):
    """401 UNAUTHORIZED: no API key, or one that is unknown or revoked.

    Answers `WWW-Authenticate: Bearer realm="tokenpool"`: a 401 names the scheme the
    server accepts (RFC 9110 section 15.5.2; the Bearer scheme is RFC 6750's). An API key
    is also accepted as `X-API-Key`, which has no challenge of its own.
    """

    code, error_code = 401, "UNAUTHORIZED"
    response_headers = {"WWW-Authenticate": 'Bearer realm="tokenpool"'}  # noqa: RUF012 - read-only


class Forbidden(ApiError):
    """403 FORBIDDEN: a valid key without the role the route needs."""

    code, error_code = 403, "FORBIDDEN"


class NotFound(ApiError):
    """404 NOT_FOUND: no such token (or route)."""

    code, error_code = 404, "NOT_FOUND"


class Conflict(ApiError):
    """409 CONFLICT: the token is not active, or the caller does not hold its current lease."""

    code, error_code = 409, "CONFLICT"


class UnsupportedMediaType(ApiError):
    """415 UNSUPPORTED_MEDIA_TYPE: a body that is not `application/json`."""

    code, error_code = 415, "UNSUPPORTED_MEDIA_TYPE"


class ServiceUnavailable(ApiError):
    """503 SERVICE_UNAVAILABLE: a dependency (the database) cannot answer now."""

    code, error_code = 503, "SERVICE_UNAVAILABLE"


class StreamsFull(ServiceUnavailable):
    """503 SERVICE_UNAVAILABLE with `Retry-After: 1`: this worker holds all the event streams it
    may (EVENT_STREAMS_PER_WORKER); a second later the request may reach another worker, or
    find a stream ended."""

    response_headers = {"Retry-After": "1"}  # noqa: RUF012 - read-only


class RateLimited(ApiError):
    """429 RATE_LIMITED; `retry_after`: whole seconds until the breached limit lets the caller in."""

    code, error_code = 429, "RATE_LIMITED"

    default_message = "Too many requests. Please try again later."

    def __init__(self, retry_after: int, message: str = default_message):
        super().__init__(message, reason="rate_limited")
        self.retry_after = retry_after


def _retry_after(exc: HTTPException) -> int:
    """Whole seconds until the breached limit resets (rounded up, at least 1)."""
    return max(1, exc.retry_after) if isinstance(exc, RateLimited) else 60


# werkzeug's reason phrases predate RFC 7231; these codes keep the names the API documents
# (413 PAYLOAD_TOO_LARGE) and that nginx's own error pages use too.
STATUS_NAMES = {413: "payload_too_large", 414: "uri_too_long"}


def status_name(code: int) -> str:
    """`Not Found` -> `not_found`: the snake_case HTTP reason of the error shape (docs/API.md)."""
    name = STATUS_NAMES.get(code) or HTTP_STATUS_CODES.get(code, "error")
    return name.lower().replace(" ", "_").replace("-", "_")


def error_response(
    code: int,
    error_code: str,
    message: str,
    *,
    details: dict | None = None,
    extra: dict | None = None,
    exc_info: BaseException | None = None,
    log_level: int | None = None,
):
    """Build (and log once) the JSON error answer every non-2xx response uses.

    Logged at INFO for 3xx, WARNING for 4xx and ERROR for 5xx unless `log_level` says otherwise
    (a failing readiness probe is expected, not an error of ours).
    """
    error_id = g.error_id = str(uuid.uuid4())  # also on the access line: the error line may be a repeat
    g.error_code = error_code  # and, with the id, in the monitoring figures' error entries
    body = {
        "status": status_name(code),
        "error_code": error_code,
        "message": message,
        "error_id": error_id,
        "request_id": g.get("request_id"),
        "timestamp": isoformat(utcnow()),
        "details": details or {},
    }
    if extra:
        body.update(extra)
    level = log_level or (logging.ERROR if code >= 500 else logging.WARNING if code >= 400 else logging.INFO)
    log.log(
        level,
        "%s %s: %s",
        code,
        error_code,
        message,
        exc_info=exc_info if code >= 500 else None,
        extra={"error_id": error_id, "error_code": error_code, "status": code},
    )
    response = jsonify(body)
    response.status_code = code
    return response


def _handle_http_exception(exc: HTTPException):
    # ApiError is handled here too: Flask files handlers of HTTPException
    # subclasses under their status code, so one ApiError handler would only
    # ever see 400s.
    if exc.code == 429:
        retry_after = _retry_after(exc)
        message = exc.message if isinstance(exc, RateLimited) else RateLimited.default_message
        response = error_response(
            429, "RATE_LIMITED", message, extra={"error": "Rate limit exceeded", "retry_after": retry_after}
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    if isinstance(exc, ApiError):
        response = error_response(exc.code, exc.error_code, exc.message, details=exc.details)
        response.headers.update(exc.response_headers)
        return response
    code = exc.code or 500
    message = HTTP_MESSAGES.get(code) or exc.description or status_name(code)
    response = error_response(code, HTTP_ERROR_CODES.get(code, status_name(code).upper()), message)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _handle_database_error(exc: DBAPIError | PoolTimeoutError):
    return error_response(
        503,
        "SERVICE_UNAVAILABLE",
        "The database is unavailable. Please retry shortly.",
        exc_info=exc,
    )


def debug_details(exc: BaseException) -> dict:
    """What a developer needs from a 500: the exception and its traceback (development only).

    `{"exception": class name, "exception_message": str(exc), "traceback": [line, ...]}`.
    Never sent in production or testing: a traceback shows code paths, file names and values.
    """
    return {
        "exception": type(exc).__name__,
        "exception_message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)).splitlines(),
    }


def _handle_unexpected(exc: Exception):
    app_state().metrics.exceptions.labels(type(exc).__name__).inc()
    details = debug_details(exc) if current_app.config["APP_ENV"] == "development" else {}
    return error_response(
        500, "INTERNAL_ERROR", "An unexpected error occurred.", details=details, exc_info=exc
    )


def register_error_handlers(app) -> None:
    """Every error of every blueprint answers in the one JSON shape."""
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(OperationalError, _handle_database_error)
    app.register_error_handler(PoolTimeoutError, _handle_database_error)
    app.register_error_handler(Exception, _handle_unexpected)
