"""Small helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from unittest import mock

from service import deadline

POOL = 5  # tokens in the test pool
# Apps built by conftest.make_app, disposed after each test. The list lives here, not in
# conftest.py: pytest imports that file as `conftest` while test modules import it as
# `tests.conftest`, two module objects; a list of its own in each would leave the apps
# of the second one undisposed, each holding its database connections to the end.
BUILT_APPS: list = []
ERROR_KEYS = {"status", "error_code", "message", "error_id", "request_id", "timestamp", "details"}


WWW_AUTHENTICATE = 'Bearer realm="tokenpool"'


def sse_messages(text: str) -> list[dict[str, str]]:
    """The Server-Sent Events messages of a stream's text, each as its fields (`retry`, `id`,
    `event`, `data`); comment lines (`: heartbeat`) left out, empty messages kept as {}."""
    return [
        dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":") and ": " in line)
        for block in text.split("\n\n")
    ]


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
    if status == 401:  # RFC 9110 section 15.5.2: a 401 names the scheme that would be accepted
        assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
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


def history_on_one_token(client, clock, releases: int) -> dict:
    """Every other token of the pool held, one user leases the last one, releases it and leases it again.

    `releases` times, a second apart on `clock`: that token's history has
    `releases + 1` usages, the newest open. Returns the last lease.
    """
    for _ in range(POOL - 1):
        activate(client, user())
    u = user()
    lease = activate(client, u).get_json()
    for _ in range(releases):
        clock.advance(1)
        assert release(client, lease).status_code == 200
        again = activate(client, u).get_json()
        assert again["token_id"] == lease["token_id"]
        lease = again
    return lease


class Ticks:
    """A monotonic clock in seconds, moved by hand (`ticks.now += 6`) where a module takes `clock=`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def frozen_deadline_clock() -> Iterator[None]:
    """The database deadline's clock stands still: a budget of 1 s leaves exactly 1 s, however
    long connecting and the round trips take (the server timeouts it sets become exact)."""
    now = deadline._clock()
    with mock.patch.object(deadline, "_clock", lambda: now):
        yield
