"""A 500's body: the exception and its traceback in development, nothing of it elsewhere."""

from __future__ import annotations

import pytest

from tests.conftest import make_app
from tests.helpers import assert_error


def failing_app(sqlite_url, env: str):
    app = make_app(sqlite_url, APP_ENV=env, SECRET_KEY="s", ENABLE_RATE_LIMITING=False)

    def explode():
        raise LookupError("no such thing: password=hunter2")

    app.add_url_rule("/api/explode", "explode", explode)
    return app


def test_development_500_carries_exception_and_traceback(sqlite_url):
    r = failing_app(sqlite_url, "development").test_client().get("/api/explode")
    body = assert_error(r, 500, "INTERNAL_ERROR", "An unexpected error occurred.")
    details = body["details"]
    assert details["exception"] == "LookupError"
    assert details["exception_message"] == "no such thing: password=hunter2"
    assert details["traceback"][0] == "Traceback (most recent call last):"
    assert any("in explode" in line for line in details["traceback"])
    assert details["traceback"][-1] == "LookupError: no such thing: password=hunter2"


@pytest.mark.parametrize("env", ["production", "testing"])
def test_500_outside_development_has_no_exception_or_traceback(sqlite_url, env):
    r = failing_app(sqlite_url, env).test_client().get("/api/explode")
    body = assert_error(r, 500, "INTERNAL_ERROR", "An unexpected error occurred.")
    assert body["details"] == {}
    text = r.get_data(as_text=True)
    assert "LookupError" not in text and "hunter2" not in text and "Traceback" not in text
