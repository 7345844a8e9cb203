"""CORS from ALLOWED_ORIGINS: the preflight for API routes, nothing without origins, `*` in production."""

from __future__ import annotations

import pytest

from service.config import ConfigError
from tests.conftest import make_app
from tests.helpers import user
from tests.protection.support import create_key, with_key

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


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/monitoring/metrics"),  # admin-only blueprint
        ("POST", "/api/monitoring/cache/clear"),
        ("DELETE", "/api/tokens/active"),  # admin-only view
        ("GET", "/api/tokens/summary"),
    ],
)
@pytest.mark.parametrize("required", [False, True], ids=["keys-optional", "keys-required"])
def test_preflights_to_every_route_need_no_key_and_spend_no_failed_auth_budget(build, method, path, required):
    """A preflight carries no key: never 401 (the browser would not send the keyed call), never charged
    to the failed-authentication budget (three preflights would lock the admin's IP out)."""
    app = build(
        ENABLE_RATE_LIMITING=True,
        ALLOWED_ORIGINS=ORIGIN,
        API_AUTH_REQUIRED=required,
        AUTH_FAILURE_RATE_LIMIT="2/minute",
    )
    admin = create_key(app, "console", "admin")
    client = app.test_client()
    for _ in range(4):
        r = client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    r = client.open(path, method=method, headers={"Origin": ORIGIN, **with_key(admin)})
    assert r.status_code == 200, r.get_data(as_text=True)


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


def test_preflights_are_never_counted_or_refused(build):
    """RATE_LIMIT_PER_MINUTE=5: seven preflights, then the real calls still have their whole budget."""
    app = build(RATE_LIMIT_PER_MINUTE=5, ALLOWED_ORIGINS=ORIGIN)
    client = app.test_client()
    for path in ["/api/tokens/summary"] * 7 + ["/api/tokens/activate", "/api/nothing-here"]:
        r = client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert r.status_code in (200, 404), r.status_code
        assert "X-RateLimit-Limit" not in r.headers and "RateLimit" not in r.headers
    for remaining in (4, 3, 2, 1, 0):
        r = client.get("/api/tokens/summary", headers={"Origin": ORIGIN})
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == str(remaining)
    r = client.get("/api/tokens/summary", headers={"Origin": ORIGIN})
    assert r.status_code == 429
    # a spent budget refuses the real call, never the preflight before it
    r = client.options(
        "/api/tokens/summary", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_preflights_of_keyed_clients_spend_no_budget(build):
    app = build(RATE_LIMIT_PER_MINUTE=1, API_KEY_RATE_LIMIT_PER_MINUTE=2, ALLOWED_ORIGINS=ORIGIN)
    key = create_key(app, "browser", "client")
    client = app.test_client()
    for _ in range(5):
        r = preflight(client, ORIGIN)
        assert r.status_code == 200
    for _ in range(2):
        r = client.post(
            "/api/tokens/activate", json={"user_id": user()}, headers={"Origin": ORIGIN, **with_key(key)}
        )
        assert r.status_code == 200
    assert client.get("/api/tokens/summary", headers={"Origin": ORIGIN}).status_code == 200  # the IP's one


def test_cors_answers_expose_the_rate_limit_headers(build):
    app = build(RATE_LIMIT_PER_MINUTE=1, ALLOWED_ORIGINS=ORIGIN)
    client = app.test_client()
    for status in (200, 429):
        r = client.get("/api/tokens/summary", headers={"Origin": ORIGIN})
        assert r.status_code == status
        exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
        wanted = {
            "x-request-id",
            "x-correlation-id",
            "retry-after",
            "ratelimit",
            "ratelimit-policy",
            *(
                f"x-ratelimit-{p}{w}"
                for p in ("limit", "remaining", "reset")
                for w in ("", "-minute", "-hour")
            ),
        }
        assert wanted <= exposed, wanted - exposed
