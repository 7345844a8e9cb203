"""Helpers of the protection tests: keys through the CLI, the 429 shape, captured log records."""

from __future__ import annotations

import logging

from tests.helpers import assert_error

RATE_LIMITED = "Too many requests. Please try again later."
AUTH_LIMITED = "Too many failed authentication attempts."
ADMIN_NEEDED = "An admin API key is required."
NOT_ADMIN = "This operation needs an admin API key."
INVALID_KEY = "Invalid API key."
KEY_NEEDED = "An API key is required."


def create_key(app, name: str, role: str = "client", *options: str) -> str:
    """`flask apikeys create`; returns the key (the last line printed)."""
    result = app.test_cli_runner().invoke(
        args=["apikeys", "create", "--name", name, "--role", role, *options]
    )
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("tp_") and len(key) > 40
    return key


def cli(app, *args: str):
    return app.test_cli_runner().invoke(args=["apikeys", *args])


def with_key(key: str, style: str = "x-api-key") -> dict:
    """The key in the header of the given style: `x-api-key` or `bearer`."""
    return {"X-API-Key": key} if style == "x-api-key" else {"Authorization": f"Bearer {key}"}


def assert_rate_limited(response, message: str = RATE_LIMITED, max_seconds: int = 61) -> dict:
    """A 429 in the common error shape, with `error`, `retry_after` and a matching Retry-After."""
    body = assert_error(response, 429, "RATE_LIMITED", message)
    assert body["status"] == "too_many_requests"
    assert body["error"] == "Rate limit exceeded"
    retry_after = body["retry_after"]
    assert isinstance(retry_after, int) and not isinstance(retry_after, bool)
    assert 1 <= retry_after <= max_seconds, retry_after
    assert response.headers["Retry-After"] == str(retry_after)
    return body


class Records(logging.Handler):
    """Every record reaching the loggers it is attached to (works with `-p no:logging`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, containing: str = "") -> list[str]:
        return [r.getMessage() for r in self.records if containing in r.getMessage()]

    def of(self, **fields) -> list[logging.LogRecord]:
        return [r for r in self.records if all(getattr(r, k, None) == v for k, v in fields.items())]
