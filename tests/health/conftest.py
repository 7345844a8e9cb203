"""Health test fixtures: a database of the test's own on the shared PostgreSQL server."""

from __future__ import annotations

import pytest

from tests.conftest import temporary_database


@pytest.fixture
def fresh_pg_database():
    """An empty database (no schema, no rows) created for this test and dropped after it."""
    with temporary_database("tokenpool_health") as url:
        yield url
