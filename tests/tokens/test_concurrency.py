"""Many threads activating, releasing and renewing at once; then the database's invariants."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import datetime

import pytest
from sqlalchemy import func, select, text

from service.extensions import db
from service.models import TokenUsage
from tests.conftest import make_app, reset_database
from tests.invariants import assert_invariants

usages = TokenUsage.__table__
pytestmark = [pytest.mark.concurrency, pytest.mark.slow]


def hammer(app, threads: int, ops_per_thread: int, pool: int):
    """Run a random mix of operations from `threads` clients; return every 200 activation.

    Users are shared between threads, so a thread may hold a lease another thread was
    granted: it then has no lease_id (a repeated activation does not show it) and
    tries, with a guessed one, what a caller who knows only the user_id would try.
    Such a release or renew must be refused (409) and count as a failure otherwise.
    """
    users = [str(uuid.uuid4()) for _ in range(pool * 3)]  # repeated users, more users than tokens
    leases, statuses, lock = [], [], threading.Lock()
    start = threading.Barrier(threads)

    def client_loop(seed):
        rnd = random.Random(seed)
        client = app.test_client()
        held = {}  # user -> (token_id, lease_id or None when this thread never got it)
        start.wait()
        for _ in range(ops_per_thread):
            u = rnd.choice(users)
            op = rnd.random()
            if op < 0.6 or u not in held:
                r = client.post("/api/tokens/activate", json={"user_id": u})
                if r.status_code == 200:
                    body = r.get_json()
                    known = held.get(u, (None, None))  # an answer again omits the lease_id we have
                    same = known[0] == body["token_id"]
                    held[u] = (body["token_id"], body.get("lease_id") or (known[1] if same else None))
                    with lock:
                        leases.append(body)
                status = r.status_code
            else:
                token_id, lease_id = held.pop(u) if op < 0.8 else held[u]
                action = "release" if op < 0.8 else "renew"
                proof = {"user_id": u, "lease_id": lease_id or str(uuid.uuid4())}
                r = client.post(f"/api/tokens/{token_id}/{action}", json=proof)
                # a guessed lease_id that is accepted is the fault under test
                status = r.status_code if lease_id or r.status_code != 200 else "guess accepted"
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=client_loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return leases, statuses


def check_database(app, leases, statuses, pool):
    # 409 is a legitimate answer (the lease was evicted meanwhile); nothing else may fail
    assert set(statuses) <= {200, 409}, sorted(set(statuses), key=str)
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
                    *([usages.c.lease_id == uuid.UUID(lease["lease_id"])] if "lease_id" in lease else []),
                )
            )
            assert found >= 1, lease
        assert sum("lease_id" in lease for lease in leases) > 0.5 * len(leases)


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


def test_postgres_never_evicts_while_a_token_is_free(postgres_url):
    """Free tokens are leased before any lease is evicted, however activations race.

    16 clients each activate and release their own lease on a pool of 40, so at
    least 24 tokens are free at every moment. A row another transaction leased
    after this statement's snapshot is re-read when locked (READ COMMITTED); if
    the free-token condition is not checked on that row, it is evicted by its old
    place in the order, and its holder's release answers 409.
    """
    threads, cycles, pool = 16, 60, 40
    app = make_app(postgres_url, POOL_SIZE=12, POOL_MAX_OVERFLOW=4, MAX_ACTIVE_TOKENS=pool)
    reset_database(app, pool)
    statuses, lock = [], threading.Lock()
    start = threading.Barrier(threads)

    def client_loop():
        client = app.test_client()
        start.wait()
        for _ in range(cycles):
            user = str(uuid.uuid4())
            lease = client.post("/api/tokens/activate", json={"user_id": user}).get_json()
            proof = {"user_id": user, "lease_id": lease["lease_id"]}
            released = client.post(f"/api/tokens/{lease['token_id']}/release", json=proof)
            with lock:
                statuses.append((lease["evicted"], released.status_code))

    workers = [threading.Thread(target=client_loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    with app.app_context(), db.engine.connect() as conn:
        ended = select(usages.c.end_reason, func.count()).group_by(usages.c.end_reason)
        reasons = dict(conn.execute(ended).all())
        assert_invariants(conn, pool)
        db.engine.dispose()
    assert len(statuses) == threads * cycles
    assert reasons == {"released": threads * cycles}, reasons
    assert set(statuses) == {(False, 200)}, sorted(set(statuses))


def test_postgres_shrinking_never_retires_a_lease_while_a_token_is_free(postgres_url):
    """Shrinking retires free tokens before any lease, however activations race with it.

    12 clients lease and release on a pool that an admin shrinks from 40 to 20 and grows
    back, again and again: at most 12 leases run at once, so every shrink finds enough free
    tokens and no lease may be open on a token when it is retired. A token leased after the
    shrink's snapshot and before its row lock would be retired by its old place in the order.
    """
    threads, cycles, pool = 12, 60, 40
    app = make_app(postgres_url, POOL_SIZE=12, POOL_MAX_OVERFLOW=4, ADMIN_API_KEY="shrink-admin-key")
    reset_database(app, 5)
    admin = {"X-API-Key": "shrink-admin-key"}
    body = {"name": "shrinking", "size": pool, "lifetime_seconds": 600, "policy": "reject"}
    assert app.test_client().post("/api/pools", json=body, headers=admin).status_code == 201
    statuses, lock, done = [], threading.Lock(), threading.Event()
    start = threading.Barrier(threads + 1)

    def client_loop():
        client = app.test_client()
        start.wait()
        for _ in range(cycles):
            user = str(uuid.uuid4())
            activated = client.post("/api/pools/shrinking/tokens/activate", json={"user_id": user})
            answers = [activated.status_code]
            if activated.status_code == 200:  # a refusal (409 POOL_EXHAUSTED) fails the test below
                lease = activated.get_json()
                proof = {"user_id": user, "lease_id": lease["lease_id"]}
                path = f"/api/pools/shrinking/tokens/{lease['token_id']}/release"
                answers.append(client.post(path, json=proof).status_code)
            with lock:
                statuses.extend(answers)

    def resize_loop():
        client = app.test_client()
        start.wait()
        while not done.is_set():
            for size in (pool // 2, pool):
                answer = client.patch("/api/pools/shrinking", json={"size": size}, headers=admin)
                with lock:
                    statuses.append(answer.status_code)

    workers = [threading.Thread(target=client_loop) for _ in range(threads)]
    resizer = threading.Thread(target=resize_loop)
    for w in [*workers, resizer]:
        w.start()
    for w in workers:
        w.join(120)
    done.set()
    resizer.join(60)
    open_at_retirement = text(
        "SELECT count(*) FROM token_usages u JOIN tokens t ON t.id = u.token_id"
        " WHERE t.retired_at IS NOT NULL AND u.started_at <= t.retired_at"
        " AND (u.ended_at IS NULL OR u.ended_at > t.retired_at)"
    )
    with app.app_context(), db.engine.connect() as conn:
        retired = conn.scalar(text("SELECT count(*) FROM tokens WHERE retired_at IS NOT NULL"))
        retired_while_leased = conn.scalar(open_at_retirement)
        assert_invariants(conn, 5)
        db.engine.dispose()
    assert set(statuses) == {200}, sorted(set(statuses))
    assert retired >= pool // 2  # the resizer ran while the clients did
    assert retired_while_leased == 0
