"""Fixtures of the end-to-end suite.

`shared_stack`: one stack (a database, Redis, two gunicorn instances, nginx) for a whole module, whose
tests keep apart by client address (each its own per-IP rate-limit bucket) and by their own users.
`stack`: a factory of stacks of a test's own, on databases from `pg_database`, for tests that stop an
instance or need other settings.
"""

from __future__ import annotations

import pytest

from tests.conftest import migrated_database
from tests.e2e.stack import Stack
from tests.procs import NGINX

SHARED_POOL = 10
SHARED_RATE_LIMIT = 50  # per client address and minute, for the shared stack


def require_nginx() -> None:
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx)")


@pytest.fixture
def stack(pg_database, tmp_path):
    """Factory: `stack(pool=10, env={...}, nginx={...})` -> a started Stack on a new database."""
    require_nginx()
    started: list[Stack] = []

    def build(pool: int = 10, env: dict | None = None, nginx: dict | None = None) -> Stack:
        url = pg_database(pool=pool)
        s = Stack(tmp_path / f"stack-{len(started)}", url, pool, env=env, nginx=nginx)
        started.append(s)
        return s.start()

    yield build
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def shared_stack(postgres_url, tmp_path_factory):
    """One stack for a module (pg_database is per test, so migrated_database does its work here)."""
    require_nginx()
    with migrated_database(SHARED_POOL) as url:
        env = {"RATE_LIMIT_PER_MINUTE": str(SHARED_RATE_LIMIT)}
        with Stack(tmp_path_factory.mktemp("shared-stack"), url, SHARED_POOL, env=env) as s:
            yield s
