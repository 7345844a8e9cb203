"""The edge with the real programs: gunicorn alone, and nginx in front of gunicorn.

- Which forwarded headers count is decided by the proxy-hop settings only: gunicorn trusts
  none of the scheme headers, so a local client cannot fake HTTPS with PROXY_FIX_X_PROTO=0,
  and contradictory scheme headers are not gunicorn's HTML 400.
- Redirects keep the method (308), answer JSON and never write the client's Host.
- Through nginx every non-2xx answer is the JSON error shape: nginx refuses what gunicorn
  would refuse with an HTML page before gunicorn sees it.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers import ERROR_KEYS
from tests.procs import Gunicorn
from tests.web import raw_http, raw_request, request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PUBLIC = "https://tokens.example.com"
FORGED = [
    {"X-Forwarded-Proto": "https"},
    {"X-Forwarded-Ssl": "on"},
    {"X-Forwarded-Protocol": "ssl"},
    {"Forwarded": "proto=https"},
    {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"},  # gunicorn once called this contradictory
    {"X-Forwarded-Ssl": "on", "X-Forwarded-Protocol": "ssl", "X-Forwarded-Proto": "http"},
]


def json_error(response, status: int, error_code: str | None = None) -> dict:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json", response
    error = response.json()
    assert ERROR_KEYS <= set(error), error
    if error_code:
        assert error["error_code"] == error_code
    return error


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    return raw_request(path, "Host: 127.0.0.1", *headers, method=method)


@pytest.fixture
def direct_gunicorn(pg_database):
    """gunicorn with no trusted proxy hop, FORCE_HTTPS on, reached directly by a local client."""
    env = {
        "DATABASE_URL": pg_database(pool=5),
        "PROXY_FIX_X_FOR": "0",
        "PROXY_FIX_X_PROTO": "0",
        "FORCE_HTTPS": "true",
        "PUBLIC_URL": PUBLIC,
        "ENABLE_RATE_LIMITING": "false",
    }
    with Gunicorn(env, workers=1) as server:
        yield server


@pytest.mark.parametrize("forged", FORGED, ids=lambda h: "+".join(h))
def test_a_local_client_cannot_fake_https_at_gunicorn(direct_gunicorn, forged):
    for method, path in (("GET", "/api/tokens/summary"), ("POST", "/api/tokens/activate")):
        r = request(direct_gunicorn.port, method, path, body={"user_id": str(uuid.uuid4())}, headers=forged)
        json_error(r, 308, "HTTPS_REQUIRED")
        assert r.headers["location"] == PUBLIC + path
        assert "strict-transport-security" not in r.headers


def test_gunicorn_redirects_never_name_the_host_header(direct_gunicorn):
    r = request(direct_gunicorn.port, "GET", "/api//tokens/summary", headers={"Host": "evil.example"})
    assert r.status == 308 and "evil.example" not in r.headers["location"] + r.body.decode()
    assert r.headers["location"] == PUBLIC + "/api//tokens/summary"  # HTTPS first; then merged


def test_through_nginx_redirects_keep_the_method_and_every_error_is_json(stack):
    s = stack(
        pool=5,
        env={"FORCE_HTTPS": "true", "PUBLIC_URL": PUBLIC, "PROXY_FIX_X_PROTO": "1"},
        nginx={"SERVER_NAME": "tokens.example.com 127.0.0.1"},
    )
    port, user = s.nginx.port, str(uuid.uuid4())

    # plain HTTP: the activation is redirected with its method, to the public host
    r = request(port, "POST", "/api/tokens/activate", body={"user_id": user})
    json_error(r, 308, "HTTPS_REQUIRED")
    assert r.headers["location"] == PUBLIC + "/api/tokens/activate"
    # scheme headers a client adds are removed by nginx: still plain HTTP, never an HTML 400
    for forged in FORGED:
        r = request(port, "POST", "/api/tokens/activate", body={"user_id": user}, headers=forged)
        json_error(r, 308, "HTTPS_REQUIRED")
    # the Location is the public host's, whatever Host said
    r = request(port, "GET", "/api//tokens/summary", headers={"Host": "tokens.example.com"})
    assert r.status == 308 and r.headers["location"] == PUBLIC + "/api//tokens/summary"
    r = request(port, "GET", "/api//tokens/summary", headers={"X-Forwarded-Proto": "https"})
    assert r.status == 308 and r.headers["location"] == PUBLIC + "/api//tokens/summary"
    # another host is refused by nginx
    r = request(port, "GET", "/api/tokens/summary", headers={"Host": "evil.example"})
    json_error(r, 421, "MISDIRECTED_REQUEST")

    # near gunicorn's default limits (request line 4094, 100 headers): served by the app in JSON
    for data in (
        get("/api/tokens/" + "a" * 4000),
        get("/api/tokens/summary", *[f"X-H{i}: v" for i in range(300)]),
        get("/api/tokens/summary", "X-A: " + "a" * 4000),
        get("/api/tokens/summary", *["X-Forwarded-For: 10.0.0.1"] * 20),
    ):
        status, headers, body = raw_http(port, data)
        assert headers["content-type"] == "application/json", (status, body[:200])
        assert ERROR_KEYS <= set(json.loads(body)), body[:200]
    # beyond nginx's: refused by nginx, in JSON too
    for data, expected in (
        (get("/api/tokens/" + "a" * 5000), 414),
        (get("/api/tokens/summary", *[f"X-H{i}: {'v' * 60}" for i in range(400)]), 431),
        (get("/api/tokens/%00"), 400),
        (get("/", method="TRACE"), 405),
    ):
        status, headers, body = raw_http(port, data)
        assert status == expected and headers["content-type"] == "application/json", (status, body[:200])
        assert ERROR_KEYS <= set(json.loads(body))
