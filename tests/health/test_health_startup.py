"""A fresh gunicorn is healthy from its first probe: the token manager sweeps when a worker starts."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.conftest import database
from tests.procs import Gunicorn, wait_for
from tests.web import http_get

pytestmark = [pytest.mark.e2e]


def last_sweep(url: str):
    with database(url) as conn:
        return conn.scalar(text("SELECT last_run_at FROM sweeper_state"))


def test_a_fresh_gunicorn_is_healthy_at_once_and_sweeps_without_waiting_an_interval(pg_database):
    url = pg_database()
    assert last_sweep(url) is None  # a fresh deployment: no sweep has ever run
    env = {"DATABASE_URL": url, "POOL_SIZE": "2", "POOL_MAX_OVERFLOW": "0", "CHECK_INTERVAL_SECONDS": "30"}
    with Gunicorn(env, workers=2) as server:
        status, raw, _ = http_get(server.url + "/health")
        body = json.loads(raw)
        assert (status, body["status"]) == (200, "healthy"), body
        assert body["checks"]["token_manager"]["status"] == "healthy"
        # within 5 s, not 15-30 s: the first sweep runs at start
        wait_for(lambda: last_sweep(url) is not None, 5, 0.1, what="the first sweep")
