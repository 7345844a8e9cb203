"""The caller is known before the limiter counts, whatever order their hooks run in.

`authentication.caller()` authenticates at the first ask of a request, from the
`authenticate` hook or from the limiter's check, and remembers the answer on the
request: per-key limits and the failed-auth budget do not depend on the
factory registering one hook before the other.
"""

from __future__ import annotations

import pytest

from service.authentication import authenticate
from service.state import app_state
from tests.helpers import assert_error
from tests.observability.test_metrics import sample
from tests.protection.support import AUTH_LIMITED, INVALID_KEY, assert_rate_limited, create_key, with_key


def limiter_before_authentication(app) -> None:
    hooks = app.before_request_funcs[None]
    check = app_state(app).limiter._check_request_limit
    assert hooks.index(authenticate) < hooks.index(check)  # the factory's order
    hooks.remove(authenticate)
    hooks.insert(hooks.index(check) + 1, authenticate)


@pytest.mark.parametrize("limiter_first", [False, True], ids=["factory-order", "limiter-first"])
def test_keyed_limits_and_the_failed_auth_budget_whatever_the_hook_order(build, limiter_first):
    app = build(API_KEY_RATE_LIMIT_PER_MINUTE=2, RATE_LIMIT_PER_MINUTE=50, AUTH_FAILURE_RATE_LIMIT="2/minute")
    if limiter_first:
        limiter_before_authentication(app)
    key = create_key(app, "ordered", "client")
    client = app.test_client()
    for left in (1, 0):
        r = client.get("/api/tokens/summary", headers=with_key(key))
        assert r.status_code == 200
        assert (r.headers["X-RateLimit-Limit-Minute"], r.headers["X-RateLimit-Remaining-Minute"]) == (
            "2",
            str(left),
        )
    assert_rate_limited(client.get("/api/tokens/summary", headers=with_key(key)))
    for guess in ("tp_guess-1", "tp_guess-2"):
        assert_error(
            client.get("/api/tokens/summary", headers=with_key(guess)), 401, "UNAUTHORIZED", INVALID_KEY
        )
    assert_rate_limited(client.get("/api/tokens/summary", headers=with_key("tp_guess-3")), AUTH_LIMITED)
    text = client.get("/metrics").get_data(as_text=True)
    # each request authenticated once: two failures counted and charged, not four
    assert sample(text, "tokenpool_auth_failures_total", reason="unknown_key") == 2
    assert sample(text, "tokenpool_rate_limit_hits_total", limit="api_key_minute") == 1
    assert sample(text, "tokenpool_rate_limit_hits_total", limit="auth_failures") == 1


def test_a_request_redirected_to_https_is_not_counted_and_probes_answer_plain_http(build):
    """The redirect runs before the limiter (a 308 spends no permit) and after the caller is known;
    the probe and scrape blueprints answer plain HTTP, whenever they are registered."""
    app = build(RATE_LIMIT_PER_MINUTE=1, FORCE_HTTPS=True, PUBLIC_URL="https://tokens.example.com")
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api").status_code == 308
    assert client.get("https://localhost/api").status_code == 200
    assert_rate_limited(client.get("https://localhost/api"))
    for path in ("/healthz", "/health/live", "/metrics"):
        assert client.get(path).status_code == 200, path
    r = client.get("/api/tokens/summary", headers=with_key("tp_guess"))
    assert_error(r, 401, "UNAUTHORIZED", INVALID_KEY)  # the caller first: a bad key is refused
