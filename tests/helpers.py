"""Small helpers shared by the test modules."""

from __future__ import annotations

import uuid

POOL = 5  # tokens in the test pool
# Apps built by conftest.make_app, disposed after each test. The list lives here, not in
# conftest.py: pytest imports that file as `conftest` while test modules import it as
# `tests.conftest`, two module objects; a list of its own in each would leave the apps
# of the second one undisposed, each holding its database connections to the end.
BUILT_APPS: list = []
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


def activate(client, user_id: str, **kwargs):
    return client.post("/api/tokens/activate", json={"user_id": user_id}, **kwargs)


def proof(lease: dict) -> dict:
    """The body a holder sends to release or renew: its `user_id` and the lease's `lease_id`."""
    return {"user_id": lease["user_id"], "lease_id": lease["lease_id"]}


def release(client, lease: dict, **kwargs):
    """The holder of `lease` (an activation answer) releases it."""
    return client.post(f"/api/tokens/{lease['token_id']}/release", json=proof(lease), **kwargs)


def renew(client, lease: dict, **kwargs):
    """The holder of `lease` (an activation answer) renews it."""
    return client.post(f"/api/tokens/{lease['token_id']}/renew", json=proof(lease), **kwargs)


def user() -> str:
    return str(uuid.uuid4())
