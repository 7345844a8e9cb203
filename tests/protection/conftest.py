"""Protection fixtures: apps built with their own settings (the limiter is made at build time)."""

from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy import text

from service.extensions import db
from tests.conftest import make_app, reset_database
from tests.procs import ThrowawayRedis
from tests.protection.support import Records


def wipe_keys(app) -> None:
    """No API keys: other tests rely on admin routes being open while no key exists."""
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_keys"))


@pytest.fixture
def build(database_url):
    """Factory: an app with these settings on the test's database, a fresh pool and no API keys.

    Rate limiting is on unless the settings say otherwise; keys are wiped again after the test.
    """
    built = []

    def create(**settings):
        settings.setdefault("ENABLE_RATE_LIMITING", True)
        app = make_app(database_url, **settings)
        reset_database(app)
        wipe_keys(app)
        built.append(app)
        return app

    yield create
    if built:
        wipe_keys(built[0])
        with built[0].app_context():
            db.engine.dispose()  # the engines were disposed before this teardown: close the wipe's connection


@pytest.fixture
def records():
    """Factory: a handler collecting the records of the named loggers, detached after the test."""
    attached = []

    def attach(*names: str) -> Records:
        handler = Records()
        for name in names:
            logging.getLogger(name).addHandler(handler)
            attached.append((name, handler))
        return handler

    yield attach
    for name, handler in attached:
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture(scope="session")
def limits_redis():
    """A throwaway Redis for limit tests that need real Redis behaviour (expiry in ms, Lua)."""
    server = ThrowawayRedis().start()
    yield server
    server.stop()


@pytest.fixture
def on_redis(limits_redis):
    """Settings putting an app's limits on the throwaway Redis, under a prefix of this test's own."""
    return {"REDIS_URL": limits_redis.url, "RATELIMIT_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
