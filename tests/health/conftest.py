"""Health test fixtures: a database of the test's own on the shared PostgreSQL server."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, _postgres_available


@pytest.fixture
def fresh_pg_database():
    """An empty database (no schema, no rows) created for this test and dropped after it."""
    problem = _postgres_available()
    if problem:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES) but unreachable: {problem}")
        pytest.skip(f"NO POSTGRESQL REACHABLE at {PG_ADMIN_URL}: {problem}")
    name = f"tokenpool_health_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
