"""service/tokens/service.py, without HTTP: the writes of the pool against SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from service.db import run_transaction
from service.errors import Conflict, NotFound
from service.models import TokenUsage
from service.timeutil import as_utc
from service.tokens import service
from service.tokens.service import Holder
from tests.helpers import POOL
from tests.invariants import assert_invariants

LIFETIME = 120
usages = TokenUsage.__table__


@pytest.fixture
def pool(app, clock):
    """Calls into the domain core in one transaction each, at the test clock's time."""

    class Pool:
        def __call__(self, work, *args, **kwargs):
            return self.run(work, *args, now=clock(), **kwargs)

        def run(self, work, *args, **kwargs):
            with app.app_context():  # a budget of its own: no earlier test's request deadline
                return run_transaction(work, *args, budget_seconds=60, **kwargs)

        def activate(self, user_id=None):
            return self(service.activate, user_id or uuid.uuid4(), lifetime=LIFETIME)

        def usages(self, token_id) -> list:
            """The token's usages, oldest first: (user_id, started_at, ended_at, end_reason)."""
            sql = (
                select(usages.c.user_id, usages.c.started_at, usages.c.ended_at, usages.c.end_reason)
                .where(usages.c.token_id == token_id)
                .order_by(usages.c.id)
            )
            rows = self.run(lambda conn: conn.execute(sql).all())
            return [(r[0], as_utc(r[1]), as_utc(r[2]), r[3]) for r in rows]

        def check_invariants(self):
            self.run(assert_invariants, POOL)

    return Pool()


def test_a_new_user_leases_an_available_token_for_the_lifetime(pool, clock):
    user = uuid.uuid4()
    lease = pool.activate(user)
    assert lease.outcome == "available" and lease.user_id == user
    assert lease.activated_at == clock() and lease.expires_at == clock() + timedelta(seconds=LIFETIME)
    assert pool.usages(lease.token_id) == [(user, clock(), None, None)]
    pool.check_invariants()


def test_a_holder_who_activates_again_gets_the_same_lease(pool, clock):
    first = pool.activate(user := uuid.uuid4())
    clock.advance(10)
    again = pool.activate(user)
    assert again.outcome == "existing"
    assert (again.token_id, again.lease_id, again.activated_at) == (
        first.token_id,
        first.lease_id,
        first.activated_at,
    )
    assert len(pool.usages(first.token_id)) == 1


def test_a_full_pool_evicts_the_lease_that_ends_first(pool, clock):
    leases = []
    for _ in range(POOL):
        leases.append(pool.activate())
        clock.advance(1)
    newcomer = pool.activate()
    assert newcomer.outcome == "evicted" and newcomer.token_id == leases[0].token_id
    assert newcomer.lease_id != leases[0].lease_id
    evicted, current = pool.usages(newcomer.token_id)
    assert evicted == (leases[0].user_id, leases[0].activated_at, clock(), "evicted")
    assert current[0] == newcomer.user_id and current[2] is None
    pool.check_invariants()


def test_an_expired_lease_ends_at_its_expiry_not_when_seen(pool, clock):
    for _ in range(POOL):
        pool.activate()
    first_expiry = clock() + timedelta(seconds=LIFETIME)
    clock.advance(LIFETIME + 30)
    lease = pool.activate()
    assert lease.outcome == "expired"
    assert pool.usages(lease.token_id)[0][2:] == (first_expiry, "expired")
    pool.check_invariants()


def test_release_by_the_holder_frees_the_token(pool, clock):
    lease = pool.activate()
    clock.advance(5)
    token, user = pool(service.release, lease.token_id, holder=Holder(lease.user_id, lease.lease_id))
    assert user == lease.user_id and token["state"] == "available" and token["current_user_id"] is None
    assert pool.usages(lease.token_id)[-1][2:] == (clock(), "released")
    pool.check_invariants()


def test_release_by_an_admin_needs_no_proof(pool):
    lease = pool.activate()
    token, user = pool(service.release, lease.token_id, holder=None)
    assert token["state"] == "available" and user == lease.user_id


@pytest.mark.parametrize("operation", ["release", "renew"])
def test_only_the_current_lease_may_end_or_extend_it(pool, operation):
    lease = pool.activate()
    call = getattr(service, operation)
    extra = {"lifetime": LIFETIME} if operation == "renew" else {}
    wrong = {
        "not_holder": Holder(uuid.uuid4(), lease.lease_id),
        "wrong_lease": Holder(lease.user_id, uuid.uuid4()),
    }
    for reason, holder in wrong.items():
        with pytest.raises(Conflict) as refused:
            pool(call, lease.token_id, holder=holder, **extra)
        assert refused.value.reason == reason
    with pytest.raises(NotFound):
        pool(call, uuid.uuid4(), holder=Holder(lease.user_id, lease.lease_id), **extra)
    assert pool.usages(lease.token_id)[-1][2] is None  # nothing changed


def test_a_token_not_active_cannot_be_released(pool, clock):
    lease = pool.activate()
    clock.advance(LIFETIME)  # expires_at is not inside the lease
    with pytest.raises(Conflict) as refused:
        pool(service.release, lease.token_id, holder=Holder(lease.user_id, lease.lease_id))
    assert refused.value.reason == "not_active"


def test_renew_extends_from_now_and_keeps_the_lease_id(pool, clock):
    lease = pool.activate()
    clock.advance(100)
    token = pool(
        service.renew, lease.token_id, holder=Holder(lease.user_id, lease.lease_id), lifetime=LIFETIME
    )
    assert token["expires_at"] == clock() + timedelta(seconds=LIFETIME)
    assert pool.activate(lease.user_id).lease_id == lease.lease_id


def test_clear_ends_active_leases_and_closes_expired_ones_as_expired(pool, clock):
    stale = pool.activate()
    clock.advance(LIFETIME + 1)
    fresh = [pool.activate() for _ in range(2)]
    assert pool(service.clear_active) == 2
    assert pool.usages(stale.token_id)[0][3] == "expired"
    for lease in fresh:
        assert pool.usages(lease.token_id)[-1][2:] == (clock(), "cleared")
    pool.check_invariants()


def test_sweep_closes_expired_leases_at_their_expiry_and_skips_when_just_run(pool, clock):
    lease = pool.activate()
    expiry = lease.expires_at
    clock.advance(LIFETIME + 60)
    result = pool(service.sweep)
    assert result.ran and result.expired == 1 and result.at == clock()
    assert pool.usages(lease.token_id)[0][2:] == (expiry, "expired")
    assert pool.run(service.last_sweep_at) == clock()
    clock.advance(1)
    assert not pool(service.sweep, min_gap_seconds=30).ran
    pool.check_invariants()


def test_seed_tops_up_and_never_deletes(pool):
    assert pool.run(service.seed, POOL) == 0
    assert pool.run(service.seed, POOL + 3) == 3
    assert pool.run(service.seed, 1) == 0
    assert pool.run(lambda conn: conn.execute(text("SELECT count(*) FROM tokens")).scalar()) == POOL + 3
