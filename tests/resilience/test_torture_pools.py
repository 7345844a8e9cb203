"""Pools under load: 32 clients for POOLS_TORTURE_SECONDS (default 12) on two gunicorn instances.

Two instances with two workers each on one PostgreSQL database, three pools:
`default` (20 tokens, evict, 1 s leases), `ev` (5 tokens, evict, 1 s) and `rj`
(5 tokens, reject, 2 s), small enough that every activation on a busy pool
evicts or is refused. Clients activate (new and returning users), release and
renew with and without their fencing token, and present stale fencing tokens.

Afterwards: no 5xx and no connection error; every invariant holds per pool
(tests/invariants.py: one open usage per token, one token per user per pool,
no more tokens than the size, a fencing token granted once per pool and
growing with start times); every activation answered 200 has its usage row
with the same fencing token; within a pool no fencing token was answered
twice for two leases, and each client's successive grants in a pool got
growing fencing tokens; every refusal was 409 POOL_EXHAUSTED with a
retry_after within the pool's lifetime; a stale fencing token was never
accepted.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.invariants import violations
from tests.resilience.support import (
    RequestLog,
    call,
    error_lines,
    new_user,
    parse_time,
    run_clients,
    two_instances,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.torture]

SECONDS = float(os.environ.get("POOLS_TORTURE_SECONDS", "12"))
CLIENTS = 32
POOLS = {"default": (20, 1, "evict"), "ev": (5, 1, "evict"), "rj": (5, 2, "reject")}
RETURNING_USERS = [new_user() for _ in range(60)]


@pytest.fixture
def stack(pg_database):
    url = pg_database(POOLS["default"][0])
    settings = {"TOKEN_LIFETIME_SECONDS": "1", "CHECK_INTERVAL_SECONDS": "1"}
    with two_instances(url, MAX_ACTIVE_TOKENS=str(POOLS["default"][0]), **settings) as servers:
        for name, (size, lifetime, policy) in POOLS.items():
            if name != "default":
                body = {"name": name, "size": size, "lifetime_seconds": lifetime, "policy": policy}
                assert call(servers[0].url, "POST", "/api/pools", body)[0] == 201
        yield url, servers


def _prefix(pool: str) -> str:
    return "/api/tokens" if pool == "default" else f"/api/pools/{pool}/tokens"


def _client(log: RequestLog, grants: list, bases: list[str], deadline: float, seed: int) -> None:
    rnd = random.Random(seed)
    mine: dict[str, dict] = {}  # pool -> this client's last lease there
    while time.monotonic() < deadline:
        base, pool = rnd.choice(bases), rnd.choice(list(POOLS))
        lease = mine.get(pool)
        op = (
            rnd.choices(["activate", "release", "renew", "stale"], [50, 20, 20, 10])[0]
            if lease
            else "activate"
        )
        if op == "activate":
            user = new_user() if rnd.random() < 0.5 else rnd.choice(RETURNING_USERS)
            r = log.send(f"activate:{pool}", base, "POST", f"{_prefix(pool)}/activate", {"user_id": user})
            if r.status == 200 and "lease_id" in r.body:  # a new lease (not a user's running one)
                grants.append((seed, pool, r.body["fencing_token"], r.started))
                mine[pool] = r.body
        else:
            proof = {"user_id": lease["user_id"], "lease_id": lease["lease_id"]}
            if op == "stale":
                fencing = lease["fencing_token"]
                proof["fencing_token"] = fencing - 1 if fencing > 1 else fencing + 1  # not this lease's
            elif rnd.random() < 0.5:
                proof["fencing_token"] = lease["fencing_token"]
            action = "release" if op == "release" else rnd.choice(["release", "renew"])
            log.send(f"{op}:{pool}", base, "POST", f"{_prefix(pool)}/{lease['token_id']}/{action}", proof)
            if op == "release":
                del mine[pool]


def test_pools_under_load_keep_their_invariants_and_fencing(stack):
    url, servers = stack
    bases = [s.url for s in servers]
    log, grants = RequestLog(), []
    deadline = time.monotonic() + SECONDS
    run_clients(_client, CLIENTS, SECONDS, log, grants, bases, deadline)
    print()
    print(log.report(f"pools torture, {CLIENTS} clients, {SECONDS:.0f}s, 2 instances x 2 workers"))

    statuses = Counter(r.outcome for r in log.results)
    unexpected = [r for r in log.results if r.status not in (200, 409)]
    assert not unexpected, f"{statuses}; first: {unexpected[:3]}\n" + "\n".join(error_lines(*servers)[:20])
    assert error_lines(*servers) == []

    refused = [r for r in log.results if r.op.startswith("activate") and r.status == 409]
    assert refused and {r.op for r in refused} == {"activate:rj"}
    for r in refused:
        assert r.body["error_code"] == "POOL_EXHAUSTED" and r.body["details"]["pool"] == "rj"
        assert 1 <= r.body["details"]["retry_after"] <= POOLS["rj"][1]
    stale = Counter((r.status, r.body.get("error_code")) for r in log.results if r.op.startswith("stale"))
    assert set(stale) <= {(409, "STALE_LEASE")}, stale

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            found = violations(conn)
            rows = conn.execute(
                text(
                    "SELECT p.name, u.token_id, u.user_id, u.started_at, u.fencing_token, u.end_reason"
                    " FROM token_usages u JOIN tokens t ON t.id = u.token_id JOIN pools p ON p.id = t.pool_id"
                )
            ).all()
    finally:
        engine.dispose()
    assert found == {}, found
    recorded = {(r.name, str(r.token_id), str(r.user_id), r.started_at, r.fencing_token) for r in rows}
    answered = [
        (
            r.op.split(":")[1],
            r.body["token_id"],
            r.body["user_id"],
            r.body["activated_at"],
            r.body["fencing_token"],
        )
        for r in log.results
        if r.op.startswith("activate") and r.status == 200
    ]
    lost = [a for a in answered if (a[0], a[1], a[2], parse_time(a[3]), a[4]) not in recorded]
    assert lost == [], f"{len(lost)} activations answered 200 without their usage row: {lost[:3]}"

    # a fencing token names one lease: answered again only for that lease (its user asking again)
    leases_of = defaultdict(set)
    for pool, token_id, user_id, activated_at, fencing in answered:
        leases_of[(pool, fencing)].add((token_id, user_id, activated_at))
    assert [k for k, v in leases_of.items() if len(v) > 1] == []
    # one client's new leases in one pool come one after the other: each fencing token greater
    by_client = defaultdict(list)
    for client, pool, fencing, _started in sorted(grants, key=lambda g: g[3]):
        by_client[(client, pool)].append(fencing)
    for key, tokens in by_client.items():
        assert all(a < b for a, b in zip(tokens, tokens[1:], strict=False)), (key, tokens)
    reasons = Counter(r.end_reason for r in rows)
    assert reasons["evicted"] and reasons["released"] and reasons["expired"], reasons
