"""Torture: 64 clients for TORTURE_SECONDS (default 30) on two gunicorn instances sharing one database.

Two instances with two workers each on one PostgreSQL database (created on the
shared server for this test) and one throwaway Redis (rate limits on, at a limit
never reached). Run twice: connected directly, and through a throwaway PgBouncer
in transaction pooling mode (`DB_PGBOUNCER=true`, 16 client connections on 4
server connections, so consecutive transactions of one client land on different
server connections) for TORTURE_PGBOUNCER_SECONDS (default 12). A 20-token pool
and a 1-second lifetime, so expiry, sweeping and eviction happen all the time.
The clients mix activations of new and returning users, releases and renewals of
their leases, reads (list, summary, one token, its usages), admin releases and
occasional clears, spread over both instances, each request on a new connection.
Some clients try to end or extend their lease with the right user_id and a guessed
lease_id, as anyone who can list tokens could.

Afterwards: no 5xx and no connection error; every invariant of the pool
holds in the database; every activation answered 200 has its usage row (token,
user, started_at == activated_at) and every release answered 200 its closed one;
leases of a token never overlap; no guessed lease_id was ever accepted.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import user as new_user
from tests.procs import Gunicorn, ThrowawayPgBouncer, ThrowawayRedis
from tests.resilience.support import RequestLog, check_database, error_lines, run_clients
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.torture]

SECONDS = float(os.environ.get("TORTURE_SECONDS", "30"))
PGBOUNCER_SECONDS = float(os.environ.get("TORTURE_PGBOUNCER_SECONDS", "12"))  # at least 2 cycles
CLIENTS = 64
POOL = 20
RETURNING_USERS = [new_user() for _ in range(150)]  # users who come back, often while still holding
EXPECTED = {200, 409}  # 409: release/renew of a lease that expired, was evicted or cleared meanwhile


@pytest.fixture(params=["direct", "pgbouncer"])
def stack(request, pg_database):
    """(database URL, seconds of load, the two instances); through PgBouncer the run is shorter."""
    url = pg_database(POOL)
    seconds, served = SECONDS, {"DATABASE_URL": url}
    redis = ThrowawayRedis().start()
    bouncer = None
    if request.param == "pgbouncer":
        # 16 client connections (2 instances x 2 workers x 4) share 4 server connections
        bouncer = ThrowawayPgBouncer(make_url(url).port or 5432, pool_size=4).start()
        seconds, served = PGBOUNCER_SECONDS, {"DATABASE_URL": bouncer.url_for(url), "DB_PGBOUNCER": "true"}
    env = {
        "APP_ENV": "development",  # admin routes open while no API key exists
        **served,
        "REDIS_URL": redis.url,
        "TOKEN_LIFETIME_SECONDS": "1",
        "CHECK_INTERVAL_SECONDS": "1",
        "MAX_ACTIVE_TOKENS": str(POOL),
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "2",
        "ENABLE_RATE_LIMITING": "true",
        "RATE_LIMIT_PER_MINUTE": "100000000",
        "SWEEPER_ENABLED": "true",
        "LOG_FORMAT": "json",
        "DRAIN_SECONDS": "1",
        "LOG_LEVEL": "ERROR",  # 409s are expected by the thousand; 5xx keep their tracebacks
    }
    servers = []
    try:
        for _ in range(2):
            servers.append(Gunicorn(env, workers=2).start())
        yield url, seconds, servers, bouncer
    finally:
        for server in servers:  # both drain at once
            server.signal(signal.SIGTERM)
        for server in servers:
            server.stop()
        if bouncer:
            bouncer.stop()
        redis.stop()
        for server in servers:
            server.log_path.unlink(missing_ok=True)


OPS = {  # weights of a client's next request
    "activate-new": 15,
    "activate-returning": 15,
    "release": 15,
    "renew": 15,
    "list": 10,
    "summary": 10,
    "get": 10,
    "usages": 5,
    "admin-release": 4,
    "guess": 4,  # release or renew with the holder's user_id and a guessed lease_id
    "clear": 0.5,
}
CYCLE, QUIET = 6, 2  # the last 2 s of every 6 s are reads only: leases expire, the sweeper closes them


def _client(log: RequestLog, bases: list[str], start: float, deadline: float, seed: int) -> None:
    rnd = random.Random(seed)
    mine: dict | None = None  # this client's last lease
    seen: list[str] = []  # token ids this client was given
    names, weights = list(OPS), list(OPS.values())
    while time.monotonic() < deadline:
        base = rnd.choice(bases)
        quiet = (time.monotonic() - start) % CYCLE >= CYCLE - QUIET
        op = rnd.choice(["list", "summary", "get"]) if quiet else rnd.choices(names, weights)[0]
        if (
            op in ("release", "renew", "guess")
            and not mine
            or op in ("get", "usages", "admin-release")
            and not seen
        ):
            op = "activate-new"
        if op.startswith("activate"):
            user = new_user() if op == "activate-new" else rnd.choice(RETURNING_USERS)
            r = log.send("activate", base, "POST", "/api/tokens/activate", {"user_id": user})
            if r.status == 200:
                seen = [*seen[-49:], r.body["token_id"]]
                if "lease_id" in r.body:
                    mine = r.body
                elif not (mine and mine["token_id"] == r.body["token_id"]):
                    mine = None  # a returning user's lease granted to another client: no lease_id here
        elif op in ("release", "renew"):
            proof = {"user_id": mine["user_id"], "lease_id": mine["lease_id"]}
            log.send(op, base, "POST", f"/api/tokens/{mine['token_id']}/{op}", proof)
            mine = None if op == "release" else mine
        elif op == "guess":
            guess = {"user_id": mine["user_id"], "lease_id": new_user()}
            log.send(
                op, base, "POST", f"/api/tokens/{mine['token_id']}/{rnd.choice(['release', 'renew'])}", guess
            )
        elif op == "list":
            state = rnd.choice(["all", "active", "available"])
            log.send(op, base, "GET", f"/api/tokens?state={state}&limit={rnd.choice([5, 100])}")
        elif op == "summary":
            log.send(op, base, "GET", "/api/tokens/summary")
        elif op == "get":
            log.send(op, base, "GET", f"/api/tokens/{rnd.choice(seen)}")
        elif op == "usages":
            log.send(op, base, "GET", f"/api/tokens/{rnd.choice(seen)}/usages?limit=20")
        elif op == "admin-release":  # no body: an admin ends whoever's lease it is
            log.send(op, base, "POST", f"/api/tokens/{rnd.choice(seen)}/release")
        else:
            log.send("clear", base, "DELETE", "/api/tokens/active")


def test_torture_two_instances_64_clients_stay_correct(stack):
    url, seconds, servers, bouncer = stack
    bases = [s.url for s in servers]
    log = RequestLog()
    start = time.monotonic()
    deadline = start + seconds
    run_clients(_client, CLIENTS, seconds, log, bases, start, deadline)

    print()
    print(log.report(f"torture, {CLIENTS} clients, {seconds:.0f}s, 2 instances x 2 workers"))
    statuses = Counter(r.outcome for r in log.results)
    per_instance = Counter(r.base for r in log.results)
    print("  per instance: " + ", ".join(f"{b} x{n}" for b, n in sorted(per_instance.items())))

    unexpected = [r for r in log.results if r.status not in EXPECTED]
    server_errors = [r for r in unexpected if r.status is not None and r.status >= 500]
    assert not server_errors, f"{len(server_errors)} 5xx, first: {server_errors[0]}\n" + "\n".join(
        error_lines(*servers)[:20]
    )
    assert not unexpected, f"unexpected answers {statuses}; first: {unexpected[:5]}"
    assert statuses["200"] > 0
    guesses = Counter(r.status for r in log.results if r.op == "guess")
    assert set(guesses) == {409}, f"a guessed lease_id was answered {guesses}"

    if bouncer:  # the load went through PgBouncer, on no more server connections than its pool
        name = url.rsplit("/", 1)[1]
        transactions = sum(int(r["total_xact_count"]) for r in bouncer.show("STATS") if r["database"] == name)
        server_connections = len(bouncer.show("SERVERS"))
        print(f"  PgBouncer: {transactions} transactions on {server_connections} server connections")
        assert transactions >= statuses["200"] / 2
        assert server_connections <= 4

    for server in servers:  # both instances still serve after the load
        assert http_get(server.url + "/api/tokens/summary")[0] == 200
    logged = error_lines(*servers)  # e.g. a failing sweeper, which no client would see
    assert logged == [], logged[:10]

    check = check_database(url, log)
    print(
        f"  database: {check.usages} usages, end reasons {dict(check.end_reasons)}, "
        f"{check.held} tokens held at the end"
    )
    assert check.violations == {}, check.violations
    assert check.lost_activations == [], f"{len(check.lost_activations)} 200 activations without usage row"
    assert check.lost_releases == [], f"{len(check.lost_releases)} 200 releases without closed usage row"
    assert check.held <= POOL

    # the load exercised what it was meant to: every way a lease ends happened
    answered = Counter(r.op for r in log.results if r.status == 200)
    assert answered["release"] and answered["renew"] and answered["clear"], answered
    assert check.end_reasons["released"] and check.end_reasons["evicted"], check.end_reasons
    assert check.end_reasons["expired"], check.end_reasons
