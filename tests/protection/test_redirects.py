"""Redirects keep the method, answer JSON, and never write the client's Host into Location.

Forwarded scheme headers count only through the trusted proxy hops (PROXY_FIX_X_PROTO).
"""

from __future__ import annotations

import pytest

from service import create_app
from service.config import ConfigError
from tests.helpers import assert_error, user

PUBLIC = "https://tokens.example.com"
EVIL = {"Host": "evil.example"}
METHODS = [
    ("GET", "/api/tokens/summary?state=active", None),
    ("HEAD", "/api/tokens/summary", None),
    ("POST", "/api/tokens/activate", {"user_id": "8b7c2c1e-1111-4d4d-9e9e-0123456789ab"}),
    ("POST", "/api/tokens/8b7c2c1e-1111-4d4d-9e9e-0123456789ab/release", {"user_id": "x"}),
    ("DELETE", "/api/tokens/active", None),
    ("PUT", "/api/tokens/summary", None),
    ("PATCH", "/api/tokens/summary", None),
]
# every header some server or library reads as "the client connected over HTTPS"
FORGED_SCHEMES = [
    {"X-Forwarded-Proto": "https"},
    {"X-Forwarded-Ssl": "on"},
    {"X-Forwarded-Protocol": "ssl"},
    {"X-Forwarded-Scheme": "https"},
    {"X-Url-Scheme": "https"},
    {"Front-End-Https": "on"},
    {"Forwarded": "proto=https"},
]


@pytest.mark.parametrize(("method", "path", "body"), METHODS)
def test_https_redirect_is_308_json_to_the_public_url(build, method, path, body):
    app = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=1, PUBLIC_URL=PUBLIC)
    r = app.test_client().open(path, method=method, json=body, headers=EVIL)
    assert r.status_code == 308  # a client repeats the same method and body (a 302 becomes a GET)
    assert r.headers["Location"] == PUBLIC + path
    assert "evil.example" not in r.get_data(as_text=True)
    if method != "HEAD":
        error = assert_error(r, 308, "HTTPS_REQUIRED")
        assert error["status"] == "permanent_redirect"
        assert error["details"] == {"location": PUBLIC + path}
    assert r.headers["Content-Type"] == "application/json"
    assert "Strict-Transport-Security" not in r.headers


@pytest.mark.parametrize(("method", "path", "body"), METHODS)
def test_https_redirect_without_public_url_is_refused(build, method, path, body):
    app = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=1)
    r = app.test_client().open(path, method=method, json=body, headers=EVIL)
    assert r.status_code == 403
    assert "Location" not in r.headers
    if method != "HEAD":
        assert_error(r, 403, "HTTPS_REQUIRED", "This API is served over HTTPS only.")
    r = app.test_client().get("/api/tokens/summary", headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 200


def test_the_activation_is_not_lost_to_a_redirect(build):
    """Following the 308 the way clients do (same method, same body) leases the token."""
    app = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=1, PUBLIC_URL=PUBLIC)
    client, u = app.test_client(), user()
    r = client.post("/api/tokens/activate", json={"user_id": u})
    assert r.status_code == 308
    location = r.headers["Location"].removeprefix(PUBLIC)
    again = client.post(location, json={"user_id": u}, headers={"X-Forwarded-Proto": "https"})
    assert again.status_code == 200 and again.get_json()["user_id"] == u


@pytest.mark.parametrize("forged", FORGED_SCHEMES)
def test_scheme_headers_without_a_trusted_hop_neither_skip_the_redirect_nor_get_hsts(build, forged):
    app = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=0, PUBLIC_URL=PUBLIC)
    r = app.test_client().get("/api/tokens/summary", headers=forged)
    assert_error(r, 308, "HTTPS_REQUIRED")
    assert "Strict-Transport-Security" not in r.headers
    app = build(ENABLE_RATE_LIMITING=False, PROXY_FIX_X_PROTO=0)
    r = app.test_client().get("/api/tokens/summary", headers=forged)
    assert r.status_code == 200 and "Strict-Transport-Security" not in r.headers


@pytest.mark.parametrize("forged", [h for h in FORGED_SCHEMES if "X-Forwarded-Proto" not in h])
def test_only_x_forwarded_proto_of_a_trusted_hop_means_https(build, forged):
    app = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=1, PUBLIC_URL=PUBLIC)
    client = app.test_client()
    assert_error(client.get("/api/tokens/summary", headers=forged), 308, "HTTPS_REQUIRED")
    r = client.get("/api/tokens/summary", headers={"X-Forwarded-Proto": "https", **forged})
    assert r.status_code == 200 and r.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api//tokens/summary", "/api/tokens/summary"),
        ("/api//tokens//summary?state=active&x=%2F", "/api/tokens/summary?state=active&x=%2F"),
        ("/api/tokens//summary", "/api/tokens/summary"),
        ("/health//live", "/health/live"),
    ],
)
@pytest.mark.parametrize("public", [None, PUBLIC])
def test_path_normalisation_never_writes_the_host_header(build, path, expected, public):
    app = build(ENABLE_RATE_LIMITING=False, PUBLIC_URL=public)
    for method in ("GET", "POST", "DELETE"):
        r = app.test_client().open(path, method=method, headers=EVIL)
        if r.status_code == 405:  # the merged path exists, not with this method
            continue
        error = assert_error(r, 308, "REDIRECT")
        assert r.headers["Location"] == (public or "") + expected
        assert error["details"]["location"] == (public or "") + expected
        assert "evil.example" not in r.get_data(as_text=True)


@pytest.mark.parametrize("host", ["evil.example", "evil.example/x?", "a@evil.example", "[::1]:80"])
def test_no_host_header_reaches_a_location(build, host):
    app = build(ENABLE_RATE_LIMITING=False)
    r = app.test_client().get("/api//tokens/summary", headers={"Host": host})
    assert r.status_code in (308, 400), r.get_data(as_text=True)
    assert r.headers.get("Location", "/api/tokens/summary") == "/api/tokens/summary"


@pytest.mark.parametrize(
    "value",
    [
        "tokens.example.com",
        "ftp://tokens.example.com",
        "https://",
        "https://user@tokens.example.com",
        "https://tokens.example.com/api",
        "https://tokens.example.com?x=1",
        "https://tokens.example.com:0",
    ],
)
def test_public_url_must_be_an_origin(value):
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        create_app({"APP_ENV": "testing", "SQLALCHEMY_DATABASE_URI": "sqlite://", "PUBLIC_URL": value})


def test_force_https_needs_an_https_public_url():
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        create_app(
            {
                "APP_ENV": "testing",
                "SQLALCHEMY_DATABASE_URI": "sqlite://",
                "FORCE_HTTPS": True,
                "PUBLIC_URL": "http://tokens.example.com",
            }
        )
    settings = {"APP_ENV": "testing", "SQLALCHEMY_DATABASE_URI": "sqlite://", "PUBLIC_URL": PUBLIC + "/"}
    app = create_app(settings)
    assert app.config["PUBLIC_URL"] == PUBLIC


@pytest.mark.parametrize(
    ("path", "https_target", "merged_target"),
    [
        (
            "/api//tokens/%0d%0aSet-Cookie:%20x/usages",
            "/api//tokens/%0D%0ASet-Cookie:%20x/usages",
            "/api/tokens/%0D%0ASet-Cookie:%20x/usages",
        ),
        (
            "/api//tokens/%2541/usages?q=%0d%0a",
            "/api//tokens/%2541/usages?q=%0d%0a",
            "/api/tokens/%2541/usages?q=%0d%0a",
        ),
        (
            "/api//tokens/%E2%82%AC%5C/usages",
            "/api//tokens/%E2%82%AC%5C/usages",
            "/api/tokens/%E2%82%AC%5C/usages",
        ),
    ],
)
def test_a_location_is_percent_encoded_never_a_second_header(build, path, https_target, merged_target):
    """A decoded CR LF, "%" or non-ASCII character of the path is encoded again, never written raw."""
    app = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PUBLIC_URL=PUBLIC)
    r = app.test_client().get(path)
    assert_error(r, 308, "HTTPS_REQUIRED")
    assert r.headers["Location"] == PUBLIC + https_target and "Set-Cookie" not in r.headers
    app = build(ENABLE_RATE_LIMITING=False)
    r = app.test_client().get(path)
    assert_error(r, 308, "REDIRECT")
    assert r.headers["Location"] == merged_target and "Set-Cookie" not in r.headers
