"""Health test fixtures: a database of the test's own on the shared PostgreSQL server."""

from __future__ import annotations

import pytest

from service.state import app_state
from tests.conftest import temporary_database


@pytest.fixture
def fresh_pg_database():
    """An empty database (no schema, no rows) created for this test and dropped after it."""
    with temporary_database("tokenpool_health") as url:
        yield url


@pytest.fixture
def past_start_up(app):
    """The app as if it had been built more than one sweeper interval ago."""
    app_state(app).health.built_monotonic -= app.config["CHECK_INTERVAL_SECONDS"] + 1
    return app
