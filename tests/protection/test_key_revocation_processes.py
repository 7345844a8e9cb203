"""Revocation and cache clears reach every process within a second: two gunicorn instances, one database."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import make_app
from tests.procs import Gunicorn
from tests.protection.support import cli, create_key
from tests.web import http_get, request

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SUMMARY = "/api/tokens/summary"


def test_a_revoked_key_is_refused_by_every_process_within_a_second(pg_database):
    url = pg_database()
    app = make_app(url)
    client_key = create_key(app, "mobile", "client")
    admin_key = create_key(app, "ops", "admin")
    env = {"DATABASE_URL": url, "ENABLE_RATE_LIMITING": "false", "SWEEPER_ENABLED": "false"}
    env |= {"API_KEY_CACHE_SECONDS": "60", "POOL_SIZE": "2", "POOL_MAX_OVERFLOW": "2"}
    with Gunicorn(env, workers=1) as a, Gunicorn(env, workers=1) as b:
        servers = (a, b)
        for server in servers:  # each process caches both keys
            for key in (client_key, admin_key):
                assert http_get(server.url + SUMMARY, headers={"X-API-Key": key})[0] == 200

        # a cache clear on one instance empties the key cache of the other
        cleared = request(a.port, "POST", "/api/monitoring/cache/clear", headers={"X-API-Key": admin_key})
        assert cleared.status == 200
        time.sleep(1.0)
        status, raw, _ = http_get(b.url + "/api/monitoring/cache-stats", headers={"X-API-Key": admin_key})
        assert status == 200
        assert json.loads(raw)["caches"]["api_keys"]["size"] == 1  # only the admin key, looked up again
        for server in servers:
            assert http_get(server.url + SUMMARY, headers={"X-API-Key": client_key})[0] == 200

        assert cli(app, "revoke", "mobile").exit_code == 0
        revoked_at = time.monotonic()
        time.sleep(1.0)
        for server in servers:
            for _ in range(3):
                assert http_get(server.url + SUMMARY, headers={"X-API-Key": client_key})[0] == 401
        assert time.monotonic() - revoked_at < 1.0 + 2.0  # the six answers came quickly too
        # the admin key was not revoked: still served everywhere
        for server in servers:
            assert http_get(server.url + SUMMARY, headers={"X-API-Key": admin_key})[0] == 200
