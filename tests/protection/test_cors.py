"""CORS from ALLOWED_ORIGINS: the preflight for API routes, nothing without origins, `*` in production."""

from __future__ import annotations

import pytest

from service.config import ConfigError
from tests.conftest import make_app
from tests.helpers import user

ORIGIN = "https://a.example"


def preflight(client, origin: str, path: str = "/api/tokens/activate"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-API-Key",
        },
    )


def test_preflight_for_an_allowed_origin(build):
    client = build(ENABLE_RATE_LIMITING=False, ALLOWED_ORIGINS=ORIGIN).test_client()
    r = preflight(client, ORIGIN)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-api-key"} <= allowed
    r = client.post("/api/tokens/activate", json={"user_id": user()}, headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in r.headers["Access-Control-Expose-Headers"]


def test_other_origin_gets_no_cors_headers(build):
    client = build(ENABLE_RATE_LIMITING=False, ALLOWED_ORIGINS=f"{ORIGIN}, https://b.example").test_client()
    assert (
        preflight(client, "https://b.example").headers["Access-Control-Allow-Origin"] == "https://b.example"
    )
    r = preflight(client, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in r.headers
    r = client.get("/api/tokens/summary", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_no_allowed_origins_no_cors_headers(build):
    client = build(ENABLE_RATE_LIMITING=False, ALLOWED_ORIGINS="").test_client()
    r = preflight(client, ORIGIN)
    assert not [name for name in r.headers.keys() if name.lower().startswith("access-control-")]
    r = client.get("/api/tokens/summary", headers={"Origin": ORIGIN})
    assert not [name for name in r.headers.keys() if name.lower().startswith("access-control-")]


def test_preflight_needs_no_key_when_keys_are_required(build):
    """Browsers never send credentials on a preflight: it must not answer 401."""
    client = build(ENABLE_RATE_LIMITING=False, ALLOWED_ORIGINS=ORIGIN, API_AUTH_REQUIRED=True).test_client()
    r = preflight(client, ORIGIN)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_any_origin_is_refused_in_production(database_url):
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        make_app(database_url, APP_ENV="production", SECRET_KEY="s", ALLOWED_ORIGINS="*")
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        make_app(database_url, APP_ENV="production", SECRET_KEY="s", ALLOWED_ORIGINS=f"{ORIGIN},*")


def test_any_origin_allowed_in_production_when_explicit(build):
    app = build(
        APP_ENV="production",
        SECRET_KEY="s",
        ENABLE_RATE_LIMITING=False,
        ALLOWED_ORIGINS="*",
        ALLOW_ANY_ORIGIN=True,
    )
    r = preflight(app.test_client(), "https://anywhere.example")
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://anywhere.example")


def test_any_origin_is_accepted_outside_production(build):
    client = build(APP_ENV="development", ENABLE_RATE_LIMITING=False, ALLOWED_ORIGINS="*").test_client()
    r = preflight(client, "https://anywhere.example")
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://anywhere.example")
