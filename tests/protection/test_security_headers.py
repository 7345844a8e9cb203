"""Talisman on every answer (errors and 429 included), HSTS only over HTTPS, FORCE_HTTPS without loops."""

from __future__ import annotations

import pytest

from tests.helpers import assert_error, user
from tests.protection.support import assert_rate_limited

CSP = "default-src 'none'; frame-ancestors 'none'"
HTTPS = {"X-Forwarded-Proto": "https"}


def assert_security_headers(r) -> None:
    h = r.headers
    assert h["Content-Security-Policy"] == CSP
    assert h["X-Frame-Options"] == "DENY"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "strict-origin-when-cross-origin"
    policy = {part.strip() for part in h["Permissions-Policy"].split(",")}
    assert {"geolocation=()", "camera=()", "microphone=()"} <= policy
    assert h["X-XSS-Protection"] == "0"  # the old "1; mode=block" is harmful (OWASP)


def test_headers_on_every_kind_of_answer(build):
    app = build(RATE_LIMIT_PER_MINUTE=2, MAX_CONTENT_LENGTH=1024)

    @app.get("/_test/boom")
    def boom():
        raise RuntimeError("boom")

    client = app.test_client()

    def from_ip(n: int) -> dict:  # one address per case, so only the 429 case meets the limit
        return {"environ_base": {"REMOTE_ADDR": f"192.0.2.{n}"}}

    answers = {
        200: client.get("/api/tokens/summary", **from_ip(1)),
        404: client.get("/api/no/such/route", **from_ip(2)),
        405: client.delete("/api/tokens/summary", **from_ip(3)),
        413: client.post("/api/tokens/activate", json={"user_id": user(), "pad": "x" * 4096}, **from_ip(4)),
        500: client.get("/_test/boom", **from_ip(5)),
    }
    for _ in range(2):
        client.get("/api/tokens/summary", **from_ip(6))
    answers[429] = client.get("/api/tokens/summary", **from_ip(6))

    assert answers[200].status_code == 200
    assert_error(answers[404], 404, "NOT_FOUND")
    assert_error(answers[405], 405, "METHOD_NOT_ALLOWED")
    assert_error(answers[413], 413, "PAYLOAD_TOO_LARGE", "Request body too large.")
    assert_error(answers[500], 500, "INTERNAL_ERROR", "An unexpected error occurred.")
    assert_rate_limited(answers[429])
    for code, r in answers.items():
        assert r.status_code == code
        assert_security_headers(r)
        assert "Strict-Transport-Security" not in r.headers, code  # plain HTTP


def test_headers_on_health_metrics_and_auth_errors(build):
    client = build(APP_ENV="production", SECRET_KEY="s", ENABLE_RATE_LIMITING=False).test_client()
    for path in ("/healthz", "/health/ready", "/metrics", "/openapi.json"):
        r = client.get(path)
        assert r.status_code == 200
        assert_security_headers(r)
    r = client.delete("/api/tokens/active")
    assert_error(r, 401, "UNAUTHORIZED")
    assert_security_headers(r)


def test_hsts_only_over_https_through_a_trusted_proxy(build):
    client = build(ENABLE_RATE_LIMITING=False, PROXY_FIX_X_PROTO=1, HSTS_MAX_AGE=600).test_client()
    r = client.get("/api/tokens/summary", headers=HTTPS)
    assert r.status_code == 200
    assert r.headers["Strict-Transport-Security"] == "max-age=600"
    r = client.get("/api/no/such/route", headers=HTTPS)
    assert_error(r, 404, "NOT_FOUND")
    assert r.headers["Strict-Transport-Security"] == "max-age=600"
    assert "Strict-Transport-Security" not in client.get("/api/tokens/summary").headers
    r = client.get("/api/tokens/summary", headers={"X-Forwarded-Proto": "http"})
    assert "Strict-Transport-Security" not in r.headers


def test_forged_forwarded_proto_without_trusted_proxy_gets_no_hsts(build):
    client = build(ENABLE_RATE_LIMITING=False, PROXY_FIX_X_PROTO=0).test_client()
    r = client.get("/api/tokens/summary", headers=HTTPS)
    assert r.status_code == 200
    assert "Strict-Transport-Security" not in r.headers
    # a real TLS connection to the app itself does get it
    r = client.get("/api/tokens/summary", base_url="https://localhost")
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def test_force_https_redirects_plain_http_once(build):
    client = build(
        ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=1, PUBLIC_URL="https://tokens.test"
    ).test_client()
    r = client.get("/api/tokens/summary?state=active")
    assert_error(r, 308, "HTTPS_REQUIRED")
    assert r.headers["Location"] == "https://tokens.test/api/tokens/summary?state=active"
    assert_security_headers(r)
    # nginx terminates TLS and forwards the redirected request over HTTP with X-Forwarded-Proto
    r = client.get("/api/tokens/summary?state=active", headers=HTTPS)
    assert r.status_code == 200
    assert "Location" not in r.headers
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    r = client.post("/api/tokens/activate", json={"user_id": user()}, headers=HTTPS)
    assert r.status_code == 200


def test_force_https_without_trusted_proxy_does_not_trust_a_forged_scheme(build):
    client = build(
        ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=0, PUBLIC_URL="https://tokens.test"
    ).test_client()
    r = client.get("/api/tokens/summary", headers=HTTPS)
    assert_error(r, 308, "HTTPS_REQUIRED")
    assert r.headers["Location"] == "https://tokens.test/api/tokens/summary"


@pytest.mark.parametrize("path", ["/healthz", "/health/ready", "/health/live", "/ready", "/live", "/metrics"])
def test_force_https_leaves_probes_and_scrapes_on_plain_http(build, path):
    client = build(ENABLE_RATE_LIMITING=False, FORCE_HTTPS=True, PROXY_FIX_X_PROTO=1).test_client()
    r = client.get(path)
    assert r.status_code == 200, (path, r.status_code, r.headers.get("Location"))
    assert "Location" not in r.headers
    assert_security_headers(r)
