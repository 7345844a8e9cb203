"""Small helpers shared by the test modules."""

from __future__ import annotations

import uuid

POOL = 5  # tokens in the test pool
ERROR_KEYS = {"status", "error_code", "message", "error_id", "request_id", "timestamp", "details"}


def assert_error(response, status: int, error_code: str, message: str | None = None) -> dict:
    """The response is the one JSON error shape with this status, code and message."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert ERROR_KEYS <= set(body), body
    assert body["error_code"] == error_code
    uuid.UUID(body["error_id"])
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["timestamp"].endswith("Z")
    if message is not None:
        assert body["message"] == message
    return body


def activate(client, user_id: str):
    return client.post("/api/tokens/activate", json={"user_id": user_id})


def user() -> str:
    return str(uuid.uuid4())
