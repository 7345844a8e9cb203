"""A key created or revoked, or a cache clear, reaches every app on the database within CHECK_SECONDS."""

from __future__ import annotations

import pytest

from service.db import observe_queries
from service.invalidation import CHECK_SECONDS
from service.state import app_state
from tests.helpers import Ticks, assert_error
from tests.protection.support import INVALID_KEY, cli, create_key, with_key

SUMMARY = "/api/tokens/summary"
CACHED = {"ENABLE_RATE_LIMITING": False, "API_KEY_CACHE_SECONDS": 600}


@pytest.fixture
def two_apps(build):
    """Two apps (two processes' worth of caches) on one database, their generation clocks by hand."""
    apps = [build(**CACHED), build(**CACHED)]
    clocks = []
    for app in apps:
        clock = Ticks()
        app_state(app).generation.clock = clock
        clocks.append(clock)

    def advance(seconds: float) -> None:
        for clock in clocks:
            clock.now += seconds

    return apps, advance


def test_a_revoked_key_is_refused_everywhere_after_one_check_period(two_apps):
    (first, second), advance = two_apps
    key = create_key(first, "mobile", "client")
    clients = [first.test_client(), second.test_client()]
    for client in clients:
        assert client.get(SUMMARY, headers=with_key(key)).status_code == 200
    assert cli(second, "revoke", "mobile").exit_code == 0
    advance(CHECK_SECONDS)
    for client in clients:
        assert_error(client.get(SUMMARY, headers=with_key(key)), 401, "UNAUTHORIZED", INVALID_KEY)


def test_a_key_tried_before_it_existed_works_once_created(two_apps):
    (first, second), advance = two_apps
    key = create_key(first, "early", "client")
    assert cli(first, "revoke", "early").exit_code == 0
    client = second.test_client()
    assert client.get(SUMMARY, headers=with_key(key)).status_code == 401  # remembered as revoked
    fresh = create_key(first, "late", "client")
    advance(CHECK_SECONDS)
    assert client.get(SUMMARY, headers=with_key(fresh)).status_code == 200


def test_a_cache_clear_on_one_app_empties_the_other(two_apps):
    (first, second), advance = two_apps
    admin = create_key(first, "ops", "admin")
    client_key = create_key(first, "mobile", "client")
    advance(CHECK_SECONDS)
    for key in (admin, client_key):
        assert second.test_client().get(SUMMARY, headers=with_key(key)).status_code == 200
    assert app_state(second).key_cache.stats()["size"] == 2
    assert first.test_client().post("/api/monitoring/cache/clear", headers=with_key(admin)).status_code == 200
    advance(CHECK_SECONDS)
    second.test_client().get(SUMMARY, headers=with_key(admin))
    assert app_state(second).key_cache.stats()["size"] == 1


def test_the_generation_is_read_at_most_once_per_check_period(two_apps):
    (app, _), advance = two_apps
    key = create_key(app, "busy", "client")
    reads = []
    observe_queries(app, lambda statement, _: "cache_generation" in statement and reads.append(statement))
    client = app.test_client()
    for _ in range(50):
        assert client.get(SUMMARY, headers=with_key(key)).status_code == 200
    assert len(reads) == 1
    advance(CHECK_SECONDS)
    for _ in range(50):
        assert client.get(SUMMARY, headers=with_key(key)).status_code == 200
    assert len(reads) == 2
