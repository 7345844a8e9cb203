"""Faults during a stream of requests, on throwaway servers this module starts (never the shared ones).

Each test runs real gunicorn instances (two workers) on a private PostgreSQL cluster
and, where needed, a private Redis, keeps four client threads activating, releasing,
renewing and reading (each request on a new connection), breaks something, and then
proves:

- nothing the service answered 200 for is lost: every 200 activation has its usage
  row, every 200 release its closed usage row, and the pool's invariants
  hold in the database;
- the service recovers without a restart: requests succeed again after the fault;
- what failed, and how, is printed; the only failures allowed are the fault's own:
  connection errors of the requests a killed worker held, 503 while PostgreSQL is down.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
import redis as redis_client

from tests.conftest import make_app, reset_database
from tests.helpers import user as new_user
from tests.procs import Gunicorn, ThrowawayPostgres, ThrowawayRedis, wait_for, worker_pids
from tests.resilience.support import OK_STATUSES, RequestLog, Stream, check_database, error_lines
from tests.web import call, http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL = 10
THREADS = 4


def _env(database_url: str, **extra: str) -> dict:
    return {
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "MAX_ACTIVE_TOKENS": str(POOL),
        "TOKEN_LIFETIME_SECONDS": "2",
        "CHECK_INTERVAL_SECONDS": "1",
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "2",
        "ENABLE_RATE_LIMITING": "false",
        "SWEEPER_ENABLED": "true",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "WARNING",
        "DRAIN_SECONDS": "1",  # quick teardown; the SIGTERM test drains longer
        **extra,
    }


def _new_pg() -> ThrowawayPostgres:
    pg = ThrowawayPostgres().init().start()
    try:
        reset_database(make_app(pg.url, MAX_ACTIVE_TOKENS=POOL), POOL)
    except BaseException:  # the caller never gets it to destroy: a failed setup left a server running
        pg.destroy()
        raise
    return pg


@pytest.fixture(scope="module")
def shared_pg():
    """One private cluster for the tests that do not stop it; each test empties it again."""
    pg = _new_pg()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def pg(shared_pg):
    reset_database(make_app(shared_pg.url, MAX_ACTIVE_TOKENS=POOL), POOL)
    return shared_pg


@pytest.fixture
def servers():
    """Start gunicorn instances through this list; all are stopped (and their logs removed) after."""
    started: list[Gunicorn] = []

    def start(env: dict, wait: str = "/health/ready") -> Gunicorn:
        started.append(Gunicorn(env, workers=2))
        return started[-1].start(wait=wait)

    yield start
    for server in started:
        server.stop()
        server.log_path.unlink(missing_ok=True)


def _ok_count(log: RequestLog, since: float = 0.0) -> int:
    return sum(1 for r in log.results if r.started >= since and r.status == 200)


def _wait_for_traffic(log: RequestLog, since: float = 0.0, n: int = 20, timeout: float = 60) -> None:
    wait_for(lambda: _ok_count(log, since) >= n, timeout, what=f"{n} successful requests")


def _assert_recovered(base: str, n: int = 10) -> None:
    """Requests succeed again: n activations of new users and their releases, one after another."""
    for _ in range(n):
        user = new_user()
        status, lease = call(base, "POST", "/api/tokens/activate", {"user_id": user})
        assert status == 200, (status, lease)
        proof = {"user_id": user, "lease_id": lease["lease_id"]}
        status, body = call(base, "POST", f"/api/tokens/{lease['token_id']}/release", proof)
        assert status in OK_STATUSES, (status, body)


def _assert_nothing_lost(url: str, log: RequestLog) -> None:
    check = check_database(url, log)
    print(f"  database: {check.usages} usages, end reasons {dict(check.end_reasons)}")
    assert check.violations == {}, check.violations
    assert check.lost_activations == [], check.lost_activations[:5]
    assert check.lost_releases == [], check.lost_releases[:5]
    assert check.held <= POOL


def test_kill_9_of_a_worker_loses_only_its_in_flight_requests(pg, servers):
    server = servers(_env(pg.url))
    log = RequestLog()
    stream = Stream(log, lambda: server.url, threads=THREADS).start()
    try:
        _wait_for_traffic(log)
        before = worker_pids(server.proc.pid)
        assert len(before) == 2, before
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: len(worker_pids(server.proc.pid)) == 2 and victim not in worker_pids(server.proc.pid),
            30,
            what="the master replaces the killed worker",
        )
        respawned_at = time.monotonic()
        _wait_for_traffic(log, since=respawned_at)
    finally:
        stream.stop()
    after = worker_pids(server.proc.pid)

    print()
    print(log.report(f"kill -9 of worker {victim} (workers before {before}, after {after})"))
    failures = log.failures()
    connection_errors = [r for r in failures if r.status is None]
    print(f"  failed: {len(failures)}, of which connection errors: {len(connection_errors)}")
    print(f"  the master replaced the worker in {respawned_at - killed_at:.2f}s")
    assert not [r for r in failures if r.status is not None], error_lines(server)[:10]
    # one request per client thread can be held by the killed worker (sync: it serves one at a time)
    assert len(connection_errors) <= THREADS, connection_errors
    assert all(r.started <= respawned_at for r in connection_errors), connection_errors
    assert server.proc.poll() is None  # the same master: no restart
    assert error_lines(server) == [], error_lines(server)[:10]
    _assert_recovered(server.url)
    _assert_nothing_lost(pg.url, log)


class ReadinessRouter:
    """A client-side load balancer: sends each request to an instance whose /health/ready answers 200."""

    def __init__(self, bases: list[str], every: float = 0.2) -> None:
        self.bases = list(bases)
        self.ready = set(bases)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for base in self.bases:
                try:
                    ok = http_get(base + "/health/ready", timeout=2)[0] == 200
                except OSError:
                    ok = False
                if ok:
                    self.ready.add(base)
                else:
                    self.ready.discard(base)
            self._stop.wait(self.every)

    def __call__(self) -> str:
        ready = sorted(self.ready)
        return random.choice(ready or self.bases)

    def start(self) -> ReadinessRouter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_sigterm_of_one_of_two_instances_drains_without_a_failed_request(pg, servers):
    first = servers(_env(pg.url, DRAIN_SECONDS="4"))  # the router needs ~0.2 s to see readiness fail
    second = servers(_env(pg.url, DRAIN_SECONDS="4"))
    router = ReadinessRouter([first.url, second.url]).start()
    log = RequestLog()
    stream = Stream(log, router, threads=THREADS).start()
    try:
        _wait_for_traffic(log, n=40)
        first.signal(signal.SIGTERM)
        sent = time.monotonic()
        exit_code = first.proc.wait(60)
        exited = time.monotonic()
        _wait_for_traffic(log, since=exited)
    finally:
        stream.stop()
        router.stop()

    print()
    print(log.report("SIGTERM of one of two instances"))
    served_after = sum(1 for r in log.results if r.base == first.url and r.started >= sent and r.status)
    print(
        f"  the stopped instance answered {served_after} requests after SIGTERM, "
        f"exited after {exited - sent:.1f}s"
    )
    failures = log.failures()
    print(f"  failed: {len(failures)}")
    assert exit_code == 0
    assert failures == [], failures[:10]
    assert {r.base for r in log.results if r.started < sent} == {first.url, second.url}
    assert error_lines(first, second) == [], error_lines(first, second)[:10]
    _assert_recovered(second.url)
    _assert_nothing_lost(pg.url, log)


def test_redis_stopped_and_restarted_costs_no_request(pg, servers):
    cache = ThrowawayRedis().start()
    try:
        env = _env(
            pg.url, REDIS_URL=cache.url, ENABLE_RATE_LIMITING="true", RATE_LIMIT_PER_MINUTE="100000000"
        )
        server = servers(env)
        store = redis_client.Redis.from_url(cache.url, socket_timeout=2)
        log = RequestLog()
        stream = Stream(log, lambda: server.url, threads=THREADS).start()
        try:
            _wait_for_traffic(log)
            assert store.keys("LIMITS:*")  # the limiter counts in this Redis
            workers = worker_pids(server.proc.pid)
            cache.stop()
            stopped = time.monotonic()
            time.sleep(3)
            _wait_for_traffic(log, since=stopped)  # served while Redis is down
            cache = ThrowawayRedis(port=cache.port).start()  # empty, same address
            restarted = time.monotonic()
            store = redis_client.Redis.from_url(cache.url, socket_timeout=2)
            wait_for(
                lambda: store.keys("LIMITS:*"), 60, interval=0.5, what="the limiter counts in Redis again"
            )
            back = time.monotonic()
            _wait_for_traffic(log, since=back)
        finally:
            stream.stop()
            store.close()
    finally:
        cache.stop()

    print()
    print(log.report("Redis stopped for 3s and restarted"))
    during = [r for r in log.results if stopped <= r.started < restarted]
    print(
        f"  requests while Redis was down: {len(during)}; "
        f"limits back on Redis {back - restarted:.1f}s after restart"
    )
    failures = log.failures()
    print(f"  failed: {len(failures)}")
    assert failures == [], failures[:10]
    assert worker_pids(server.proc.pid) == workers  # no worker died or was restarted
    assert error_lines(server) == [], error_lines(server)[:10]
    _assert_recovered(server.url)
    _assert_nothing_lost(pg.url, log)


def test_postgres_stopped_and_restarted_answers_only_503_meanwhile(servers):
    pg = _new_pg()
    try:
        server = servers(_env(pg.url))
        log = RequestLog()
        stream = Stream(log, lambda: server.url, threads=THREADS, pause=0.05).start()
        try:
            _wait_for_traffic(log)
            workers = worker_pids(server.proc.pid)
            stopping = time.monotonic()
            pg.stop("fast")
            time.sleep(4)
            wait_for(lambda: any(r.status == 503 for r in log.results[-20:]), 20, what="503 while down")
            restarting = time.monotonic()
            pg.start()  # same port, same data; the service is not restarted
            started = time.monotonic()
            wait_for(
                lambda: call(server.url, "GET", "/api/tokens/summary", timeout=10)[0] == 200,
                60,
                interval=0.2,
                what="the service answers 200 again",
            )
            recovered = time.monotonic()
            _wait_for_traffic(log, since=recovered)
        finally:
            stream.stop()

        print()
        print(log.report("PostgreSQL stopped for ~4s and restarted"))
        failures = log.failures()
        unavailable = [r for r in failures if r.status == 503]
        late = [r for r in unavailable if r.started > started]
        print(
            f"  failed: {len(failures)}, of which 503: {len(unavailable)} "
            f"({len(late)} begun after the restart); slowest 503 took "
            f"{max((r.ended - r.started for r in unavailable), default=0):.2f}s; "
            f"recovered {recovered - started:.2f}s after the restart"
        )
        assert [r for r in failures if r.status != 503] == [], (
            [r for r in failures if r.status != 503][:10],
            error_lines(server)[:10],
        )
        assert unavailable, "no request saw the outage"
        assert all(r.ended >= stopping for r in unavailable), "503 before PostgreSQL went down"
        # a pooled connection found dead after the restart may cost one 503 per worker, no more
        assert len(late) <= 2 * 2, late
        for r in unavailable:
            assert r.body["error_code"] == "SERVICE_UNAVAILABLE", r.body
        assert worker_pids(server.proc.pid) == workers  # recovered without a restart of any process
        print(f"  down from {stopping:.1f} to {restarting:.1f} (monotonic)")
        _assert_recovered(server.url)
        _assert_nothing_lost(pg.url, log)
    finally:
        pg.destroy()
