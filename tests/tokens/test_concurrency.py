"""Many threads activating, releasing and renewing at once; then the database's invariants."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import datetime

import pytest
from sqlalchemy import func, select

from service.extensions import db
from service.models import TokenUsage
from tests.conftest import make_app, reset_database
from tests.invariants import assert_invariants

usages = TokenUsage.__table__
pytestmark = [pytest.mark.concurrency, pytest.mark.slow]


def hammer(app, threads: int, ops_per_thread: int, pool: int):
    """Run a random mix of operations from `threads` clients; return every 200 activation."""
    users = [str(uuid.uuid4()) for _ in range(pool * 3)]  # repeated users, more users than tokens
    leases, statuses, lock = [], [], threading.Lock()
    start = threading.Barrier(threads)

    def client_loop(seed):
        rnd = random.Random(seed)
        client = app.test_client()
        held = {}
        start.wait()
        for _ in range(ops_per_thread):
            u = rnd.choice(users)
            op = rnd.random()
            if op < 0.6 or u not in held:
                r = client.post("/api/tokens/activate", json={"user_id": u})
                if r.status_code == 200:
                    body = r.get_json()
                    held[u] = body["token_id"]
                    with lock:
                        leases.append(body)
            elif op < 0.8:
                r = client.post(f"/api/tokens/{held.pop(u)}/release", json={"user_id": u})
            else:
                r = client.post(f"/api/tokens/{held[u]}/renew", json={"user_id": u})
            with lock:
                statuses.append(r.status_code)

    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return leases, statuses


def check_database(app, leases, statuses, pool):
    # 409 is a legitimate answer (the lease was evicted meanwhile); nothing else may fail
    assert set(statuses) <= {200, 409}, sorted(set(statuses))
    with app.app_context(), db.engine.connect() as conn:
        assert_invariants(conn, pool)
        for lease in leases:  # every 200 activation has its usage row, committed
            found = conn.scalar(
                select(func.count())
                .select_from(usages)
                .where(
                    usages.c.token_id == uuid.UUID(lease["token_id"]),
                    usages.c.user_id == uuid.UUID(lease["user_id"]),
                    usages.c.started_at == datetime.fromisoformat(lease["activated_at"]),
                )
            )
            assert found >= 1, lease


@pytest.mark.parametrize("pool", [8, 200])
def test_postgres_32_threads_keep_every_invariant(postgres_url, pool):
    # 32 clients on at most 20 connections: 20 transactions race at once, and the run
    # stays within its connection budget on the shared server (tests/conftest.py)
    app = make_app(postgres_url, POOL_SIZE=16, POOL_MAX_OVERFLOW=4, MAX_ACTIVE_TOKENS=pool)
    reset_database(app, pool)
    leases, statuses = hammer(app, threads=32, ops_per_thread=40, pool=pool)
    assert statuses.count(200) > 0.5 * len(statuses)
    check_database(app, leases, statuses, pool)
    with app.app_context():
        db.engine.dispose()


def test_sqlite_threads_keep_every_invariant(sqlite_url):
    app = make_app(sqlite_url, MAX_ACTIVE_TOKENS=6)
    reset_database(app, 6)
    leases, statuses = hammer(app, threads=6, ops_per_thread=40, pool=6)
    check_database(app, leases, statuses, 6)
    with app.app_context():
        db.engine.dispose()
