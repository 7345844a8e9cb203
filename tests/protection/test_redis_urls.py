"""Every Redis use through `redis+sentinel://` (with a failover) and `rediss://` (TLS), throwaway servers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from service.config import ConfigError
from service.redis_connect import parse_sentinel_url, redis_client
from tests.conftest import make_app, reset_database
from tests.procs import Gunicorn, ThrowawayRedis, free_port, wait_for
from tests.protection.support import assert_rate_limited
from tests.protection.test_rate_limit_processes import env_for, spread

SERVICE = "tokenpool-master"


def test_sentinel_url_parts():
    parsed = parse_sentinel_url("redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-b:26380/mymaster")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380))
    assert parsed.service_name == "mymaster"
    assert (parsed.username, parsed.password) == (None, "s@cret")
    assert parse_sentinel_url("redis+sentinel://u:p@h:1/svc").username == "u"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:26379",
        "redis+sentinel://h:26379/",
        "redis+sentinel:///svc",
        "redis+sentinel://h/svc",
    ],
)
def test_malformed_sentinel_url_refuses_to_start(sqlite_url, url):
    with pytest.raises(ConfigError, match="REDIS_URL"):
        make_app(sqlite_url, ENABLE_RATE_LIMITING=True, REDIS_URL=url)


def keys(client: redis.Redis, pattern: str) -> dict[str, int]:
    return {k.decode(): int(client.get(k) or 0) for k in client.keys(pattern)}


class SentinelSet:
    """A throwaway master, one replica and one redis-sentinel watching them (all on free ports)."""

    def __init__(self, tmp: Path):
        self.master = ThrowawayRedis()
        # the replica stores the master's snapshot on disk: in tmp, not the working directory
        self.replica = ThrowawayRedis(
            args=("--replicaof", "127.0.0.1", str(self.master.port), "--dir", str(tmp))
        )
        self.port = free_port()
        self.conf = tmp / "sentinel.conf"
        self.proc: subprocess.Popen | None = None
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{SERVICE}"

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
        )
        self.proc = subprocess.Popen(
            # redis-server's own sentinel mode: no package beyond redis-server needed
            ["redis-server", str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.master_port, 10, what="sentinel up")
        wait_for(self._replica_known, 20, what="sentinel sees the synced replica")
        return self

    def ask(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)

    def _replica_known(self) -> bool:
        synced = redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
        return synced.get("master_link_status") == "up" and bool(
            self.ask().execute_command("SENTINEL", "REPLICAS", SERVICE)
        )

    def master_port(self) -> int:
        # raw command: redis-py 6.4's sentinel_get_master_addr_by_name fails on a plain client
        return int(self.ask().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.replica.stop()
        self.master.stop()


@pytest.fixture
def sentinel_set(tmp_path):
    servers = SentinelSet(tmp_path)
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.mark.e2e
def test_sentinel_limits_monitoring_and_health_then_failover(sqlite_url, sentinel_set):
    settings = {"ENABLE_RATE_LIMITING": True, "REDIS_URL": sentinel_set.url, "MONITORING_FLUSH_SECONDS": 0}
    first = make_app(sqlite_url, RATE_LIMIT_PER_MINUTE=6, RATE_LIMIT_LEASE=1, **settings)
    second = make_app(sqlite_url, RATE_LIMIT_PER_MINUTE=6, RATE_LIMIT_LEASE=1, **settings)
    reset_database(first)
    a, b = first.test_client(), second.test_client()
    # two instances share one exact limit in the master Sentinel names
    for client in (a, b, a, b, a, b):
        assert client.get("/api/tokens/summary").status_code == 200
    assert_rate_limited(a.get("/api/tokens/summary"))
    assert_rate_limited(b.get("/api/tokens/summary"))
    master = redis.Redis(port=sentinel_set.master.port, socket_timeout=1)
    assert list(keys(master, "*LIMITER/tokenpool/*").values()) == [8]  # 6 admitted + 2 refused
    assert master.keys("tokenpool:mon:m:*"), "monitoring figures land in the master"
    health = a.get("/health").get_json()
    assert health["checks"]["redis"]["status"] == "healthy"

    # failover during a stream of requests: no 5xx, limits served throughout
    stream = make_app(
        sqlite_url,
        RATE_LIMIT_PER_MINUTE=100_000,
        RATE_LIMIT_LEASE=1,
        RATELIMIT_KEY_PREFIX="stream",
        **settings,
    )
    client = stream.test_client()
    old_port = sentinel_set.master.port
    sentinel_set.master.stop()  # killed by its PID
    statuses, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        started = time.monotonic()
        statuses.append(client.get("/api/tokens/summary").status_code)
        assert time.monotonic() - started < 2, "a request stalled on Redis"
        if sentinel_set.master_port() != old_port and stream_counted(sentinel_set):
            break
        time.sleep(0.05)
    assert sentinel_set.master_port() == sentinel_set.replica.port, "Sentinel promoted the replica"
    assert len(statuses) >= 5 and set(statuses) == {200}, statuses
    assert stream_counted(sentinel_set), "the limiter went back to Redis (the new master) without a restart"
    # the new master enforces limits again for fresh instances and keeps monitoring figures
    fresh = make_app(
        sqlite_url, RATE_LIMIT_PER_MINUTE=2, RATE_LIMIT_LEASE=1, RATELIMIT_KEY_PREFIX="after", **settings
    )
    c = fresh.test_client()
    assert [c.get("/api/tokens/summary").status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(c.get("/api/tokens/summary"))
    promoted = redis.Redis(port=sentinel_set.replica.port, socket_timeout=1)
    assert list(keys(promoted, "*LIMITER/after/*").values()) == [3]
    assert promoted.keys("tokenpool:mon:m:*")


@pytest.mark.e2e
def test_frozen_sentinel_and_lost_master_keep_requests_bounded(sqlite_url, sentinel_set):
    """Sentinel's own clients would wait forever without a timeout (limits passes no sentinel timeouts)."""
    settings = {"ENABLE_RATE_LIMITING": True, "REDIS_URL": sentinel_set.url, "MONITORING_FLUSH_SECONDS": 0}
    app = make_app(sqlite_url, RATE_LIMIT_PER_MINUTE=1000, RATE_LIMIT_LEASE=1, **settings)
    reset_database(app)
    client = app.test_client()
    assert client.get("/api/tokens/summary").status_code == 200
    sentinel_set.proc.send_signal(signal.SIGSTOP)  # answers nothing, connections still accepted
    try:
        sentinel_set.master.stop()  # the client must ask the frozen sentinel for the master
        for path in ["/api/tokens/summary"] * 4 + ["/health"]:
            started = time.monotonic()
            response = client.get(path)
            assert time.monotonic() - started < 3, f"{path} stalled on a frozen sentinel"
            assert response.status_code == 200
        assert response.get_json()["checks"]["redis"]["status"] == "degraded"
    finally:
        sentinel_set.proc.send_signal(signal.SIGCONT)


def stream_counted(servers: SentinelSet) -> bool:
    """The stream's per-IP window is being counted in the promoted replica."""
    promoted = redis.Redis(port=servers.replica.port, socket_timeout=1)
    try:
        if promoted.info("replication")["role"] != "master":
            return False
        return bool(keys(promoted, "*LIMITER/stream/*"))
    except redis.RedisError:
        return False


def tls_files(tmp_path: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made here by openssl."""
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    files = {"ca": str(ca)}
    for who, name in (("srv", "127.0.0.1"), ("client", "tokenpool")):
        key, csr, cert = (tmp_path / f"{who}.{n}" for n in ("key", "csr", "pem"))
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
            "-out", str(csr))  # fmt: skip
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
        files |= {f"{who}_key": str(key), f"{who}_cert": str(cert)}
    return files


def start_tls_redis(files: dict[str, str], *, client_certificates: bool) -> tuple[ThrowawayRedis, str]:
    """A redis-server answering only TLS; `client_certificates`: it refuses clients without one."""
    port = free_port()
    args = ("--port", "0", "--tls-port", str(port), "--tls-cert-file", files["srv_cert"],
            "--tls-key-file", files["srv_key"], "--tls-ca-cert-file", files["ca"],
            "--tls-auth-clients", "yes" if client_certificates else "no")  # fmt: skip
    return ThrowawayRedis(port=port, args=args).start(), f"rediss://127.0.0.1:{port}/0"


@pytest.fixture
def tls_redis(tmp_path):
    """A TLS-only redis-server with a certificate from a CA made by the test: (URL, the CA's file)."""
    files = tls_files(tmp_path)
    server, url = start_tls_redis(files, client_certificates=False)
    yield url, files["ca"]
    server.stop()


@pytest.fixture
def mutual_tls_redis(tmp_path):
    """A TLS-only redis-server that also asks for a client certificate: (URL, the files)."""
    files = tls_files(tmp_path)
    server, url = start_tls_redis(files, client_certificates=True)
    yield url, files
    server.stop()


@pytest.mark.e2e
def test_tls_redis_for_limits_monitoring_and_health(sqlite_url, tls_redis):
    url, ca = tls_redis
    app = make_app(
        sqlite_url,
        ENABLE_RATE_LIMITING=True,
        REDIS_URL=url,
        REDIS_TLS_CA_CERTS=ca,
        RATE_LIMIT_PER_MINUTE=3,
        RATE_LIMIT_LEASE=1,
        MONITORING_FLUSH_SECONDS=0,
    )
    reset_database(app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    assert_rate_limited(client.get("/api/tokens/summary"))
    direct = redis_client(url, {"REDIS_TLS_CA_CERTS": ca}, timeout=2)
    assert list(keys(direct, "*LIMITER/tokenpool/*").values()) == [4]
    assert direct.keys("tokenpool:mon:m:*"), "monitoring figures land in the TLS Redis"
    assert client.get("/health").get_json()["checks"]["redis"]["status"] == "healthy"


@pytest.mark.e2e
def test_tls_redis_with_an_untrusted_certificate_is_degraded_not_fatal(sqlite_url, tls_redis):
    url, _ = tls_redis  # no REDIS_TLS_CA_CERTS: the system's CAs do not know the test CA
    app = make_app(sqlite_url, ENABLE_RATE_LIMITING=True, REDIS_URL=url, RATE_LIMIT_PER_MINUTE=3)
    reset_database(app)
    client = app.test_client()
    started = time.monotonic()
    assert client.get("/api/tokens/summary").status_code == 200  # served on the in-memory fallback
    assert time.monotonic() - started < 2
    assert client.get("/health").get_json()["checks"]["redis"]["status"] == "degraded"


@pytest.mark.e2e
def test_tls_redis_with_a_client_certificate(sqlite_url, mutual_tls_redis):
    """REDIS_TLS_CERTFILE / REDIS_TLS_KEYFILE for a server with `tls-auth-clients yes`; without: degraded."""
    url, files = mutual_tls_redis
    tls = {"REDIS_TLS_CA_CERTS": files["ca"]}
    mine = {"REDIS_TLS_CERTFILE": files["client_cert"], "REDIS_TLS_KEYFILE": files["client_key"]}
    settings = {"ENABLE_RATE_LIMITING": True, "REDIS_URL": url, "RATE_LIMIT_PER_MINUTE": 3, **tls}
    app = make_app(sqlite_url, RATE_LIMIT_LEASE=1, MONITORING_FLUSH_SECONDS=0, **settings, **mine)
    reset_database(app)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/tokens/summary").status_code == 200
    assert_rate_limited(client.get("/api/tokens/summary"))
    direct = redis_client(url, tls | mine, timeout=2)
    assert list(keys(direct, "*LIMITER/tokenpool/*").values()) == [4]
    assert direct.keys("tokenpool:mon:m:*"), "monitoring figures land in the TLS Redis"
    assert client.get("/health").get_json()["checks"]["redis"]["status"] == "healthy"
    with pytest.raises(redis.ConnectionError):  # the server does ask for the certificate
        redis_client(url, tls, timeout=2).ping()
    without = make_app(sqlite_url, RATELIMIT_KEY_PREFIX="without", **settings).test_client()
    started = time.monotonic()
    assert without.get("/api/tokens/summary").status_code == 200  # served on the in-memory fallback
    assert time.monotonic() - started < 2
    assert without.get("/health").get_json()["checks"]["redis"]["status"] == "degraded"


@pytest.mark.e2e
@pytest.mark.slow
def test_two_gunicorn_instances_through_sentinel_and_a_failover(pg_database, sentinel_set):
    """Real processes: REDIS_URL=redis+sentinel://... from the environment, two instances x two workers."""
    n = 20
    env = env_for(pg_database(), REDIS_URL=sentinel_set.url, RATE_LIMIT_PER_MINUTE=str(n))
    with Gunicorn(env, workers=2) as a, Gunicorn(env, workers=2) as b:
        statuses = [status for status, _, _ in spread([a, b], 2 * n)]
        assert statuses == [200] * n + [429] * n  # exact across both instances and all four workers
        before = counted(sentinel_set.master.port)
        assert before >= 2 * n
        sentinel_set.master.stop()  # killed by its PID while requests keep coming
        seen, deadline = [], time.monotonic() + 40
        while time.monotonic() < deadline:
            seen += [status for status, _, _ in spread([a, b], 4)]
            promoted = sentinel_set.master_port() == sentinel_set.replica.port
            recovered = all(any("storage recovered" in line for line in g.log_lines()) for g in (a, b))
            if promoted and recovered and counted(sentinel_set.replica.port) > before:
                break
        assert seen and not [s for s in seen if s >= 500], seen
        assert set(seen) <= {200, 429}
        assert sentinel_set.master_port() == sentinel_set.replica.port
        after = counted(sentinel_set.replica.port)
        assert after > before, "counting resumed on the promoted replica without a restart"
        for server in (a, b):  # fallback while failing over, then back to Redis: no error, no traceback
            lines = server.log_lines()
            assert any("falling back to in-memory" in line for line in lines)
            assert any("Rate limit storage recovered" in line for line in lines)
            assert not any('"level":"ERROR"' in line or "Traceback" in line for line in lines)


def counted(port: int) -> int:
    """The sum of the limiter's counters in the Redis on `port` (0 when it does not answer)."""
    try:
        return sum(keys(redis.Redis(port=port, socket_timeout=1), "*LIMITER/*").values())
    except redis.RedisError:
        return 0
