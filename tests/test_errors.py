"""service/errors.py: every error, raised anywhere, answers in the one JSON shape."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import BadRequest, Gone

from service.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidJson,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
    debug_details,
    status_name,
)
from tests.conftest import make_app
from tests.helpers import assert_error


@pytest.fixture
def raising(sqlite_url):
    """An app with `/raise/<n>` views that raise the n-th of `RAISED`; a test client on it."""

    def build(*raised: BaseException, **overrides):
        app = make_app(sqlite_url, **overrides)
        for n, exc in enumerate(raised):

            def view(exc=exc):
                raise exc

            app.add_url_rule(f"/raise/{n}", f"raise_{n}", view)
        return app.test_client()

    return build


@pytest.mark.parametrize(
    ("error", "status", "error_code", "status_text"),
    [
        (ValidationError, 400, "VALIDATION_ERROR", "bad_request"),
        (InvalidJson, 400, "INVALID_JSON", "bad_request"),
        (Unauthorized, 401, "UNAUTHORIZED", "unauthorized"),
        (Forbidden, 403, "FORBIDDEN", "forbidden"),
        (NotFound, 404, "NOT_FOUND", "not_found"),
        (Conflict, 409, "CONFLICT", "conflict"),
        (UnsupportedMediaType, 415, "UNSUPPORTED_MEDIA_TYPE", "unsupported_media_type"),
        (ServiceUnavailable, 503, "SERVICE_UNAVAILABLE", "service_unavailable"),
    ],
)
def test_each_api_error_answers_its_status_code_and_message(raising, error, status, error_code, status_text):
    client = raising(error("Something precise.", details={"field": "x"}))
    body = assert_error(client.get("/raise/0"), status, error_code, "Something precise.")
    assert body["status"] == status_text and body["details"] == {"field": "x"}


def test_an_api_error_reason_defaults_to_its_code():
    assert ValidationError("m").reason == "validation_error"
    assert Conflict("m", reason="not_holder").reason == "not_holder"
    assert isinstance(Conflict("m"), ApiError) and Conflict.code == 409


def test_rate_limited_says_when_to_come_back(raising):
    response = raising(RateLimited(7)).get("/raise/0")
    body = assert_error(response, 429, "RATE_LIMITED", RateLimited.default_message)
    assert body["error"] == "Rate limit exceeded" and body["retry_after"] == 7
    assert response.headers["Retry-After"] == "7"


def test_werkzeug_errors_get_the_shape_and_a_code(raising):
    client = raising(BadRequest(), Gone())
    assert_error(client.get("/raise/0"), 400, "VALIDATION_ERROR")
    assert assert_error(client.get("/raise/1"), 410, "GONE")["status"] == "gone"
    assert_error(client.get("/no/such/route"), 404, "NOT_FOUND", "The requested URL was not found.")
    response = client.post("/raise/0")
    assert_error(response, 405, "METHOD_NOT_ALLOWED", "The method is not allowed for the requested URL.")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_a_database_outage_is_a_503_not_a_500(raising):
    client = raising(OperationalError("SELECT 1", None, Exception("connection refused")), PoolTimeoutError())
    for n in (0, 1):
        assert_error(
            client.get(f"/raise/{n}"),
            503,
            "SERVICE_UNAVAILABLE",
            "The database is unavailable. Please retry shortly.",
        )


def test_an_unexpected_error_is_a_500_without_internals(raising, caplog):
    client = raising(KeyError("secret-internal-name"))
    with caplog.at_level(logging.ERROR, logger="tokenpool.errors"):
        response = client.get("/raise/0")
    body = assert_error(response, 500, "INTERNAL_ERROR", "An unexpected error occurred.")
    assert body["details"] == {} and "secret-internal-name" not in response.get_data(as_text=True)
    (record,) = [r for r in caplog.records if r.name == "tokenpool.errors"]
    assert record.error_id == body["error_id"] and record.exc_info is not None  # the log has it


def test_development_shows_the_traceback_of_a_500(raising):
    body = raising(KeyError("where"), APP_ENV="development").get("/raise/0").get_json()
    assert body["details"]["exception"] == "KeyError"
    assert any("raise exc" in line for line in body["details"]["traceback"])


def test_status_names_are_snake_case_reasons():
    assert status_name(404) == "not_found"
    assert status_name(413) == "payload_too_large"
    assert status_name(429) == "too_many_requests"
    assert status_name(599) == "error"


def test_debug_details_name_the_exception():
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        details = debug_details(exc)
    assert details["exception"] == "ValueError" and details["exception_message"] == "bad value"
    assert details["traceback"][-1] == "ValueError: bad value"
