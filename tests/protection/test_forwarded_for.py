"""The client address: a forged X-Forwarded-For never picks the bucket; one trusted hop is honoured."""

from __future__ import annotations

from flask import request

from tests.protection.support import assert_rate_limited

LIMIT = 3


def get(client, xff: str | None = None):
    return client.get("/api/tokens/summary", headers={"X-Forwarded-For": xff} if xff else {})


def test_without_trusted_hops_forged_addresses_share_one_bucket(build, records):
    app = build(RATE_LIMIT_PER_MINUTE=LIMIT, PROXY_FIX_X_FOR=0, LOG_LEVEL="INFO")
    access = records("tokenpool.access")
    client = app.test_client()
    for i in range(LIMIT):
        assert get(client, f"203.0.113.{i}").status_code == 200
    assert_rate_limited(get(client, "203.0.113.99"))
    assert_rate_limited(get(client, "198.51.100.1, 203.0.113.5"))
    assert_rate_limited(get(client))
    seen = {r.remote_addr for r in access.records if getattr(r, "path", None) == "/api/tokens/summary"}
    assert seen == {"127.0.0.1"}


def test_one_trusted_hop_uses_the_address_the_proxy_saw(build, records):
    app = build(RATE_LIMIT_PER_MINUTE=LIMIT, PROXY_FIX_X_FOR=1, LOG_LEVEL="INFO")
    access = records("tokenpool.access")
    client = app.test_client()
    for _ in range(LIMIT):
        assert get(client, "203.0.113.7").status_code == 200
    assert_rate_limited(get(client, "203.0.113.7"))
    # the client may prepend anything; the proxy appends what it saw, and only that is trusted
    assert_rate_limited(get(client, "10.9.9.9, 203.0.113.7"))
    assert_rate_limited(get(client, "198.51.100.250, 203.0.113.7"))
    assert get(client, "198.51.100.9").status_code == 200  # another client behind the proxy
    assert get(client).status_code == 200  # the proxy itself (127.0.0.1) is yet another bucket
    addresses = [r.remote_addr for r in access.records if getattr(r, "path", None) == "/api/tokens/summary"]
    assert addresses == ["203.0.113.7"] * 6 + ["198.51.100.9", "127.0.0.1"]


def test_trusted_hop_sets_remote_addr_in_the_environ(build):
    app = build(ENABLE_RATE_LIMITING=False, PROXY_FIX_X_FOR=1)
    seen = {}

    @app.get("/_test/whoami")
    def whoami():
        seen["remote_addr"] = request.remote_addr
        seen["environ"] = request.environ["REMOTE_ADDR"]
        return {"ok": True}

    client = app.test_client()
    assert client.get("/_test/whoami", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.8"}).status_code == 200
    assert seen == {"remote_addr": "203.0.113.8", "environ": "203.0.113.8"}
