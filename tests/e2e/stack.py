"""Real nginx in front of real gunicorn instances, for the end-to-end suite and measure_nginx.py.

nginx runs as a foreground master (`daemon off`) on a free loopback port with a
configuration rendered from nginx/templates by nginx/render.py into a scratch
directory that also holds its pid file, logs and temp dirs, so nothing under
/etc, /run or /var is touched. The gunicorn instances are tests.procs.Gunicorn.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from pathlib import Path

from tests.procs import Gunicorn, Nginx, ThrowawayRedis, json_lines

WRK = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)


def access_lines(gunicorn: Gunicorn) -> list[dict]:
    """The app's access lines (logger tokenpool.access) of one gunicorn instance."""
    return [r for r in json_lines(gunicorn.log_lines()) if r.get("logger") == "tokenpool.access"]


# --- the whole stack --------------------------------------------------------------------


def gunicorn_env(database_url: str, redis_url: str, pool: int, **extra: str) -> dict:
    """The production-like environment of one instance (gunicorn, nginx, PostgreSQL, Redis)."""
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": "e2e-secret",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PROXY_FIX_X_FOR": "1",
        "PROXY_FIX_X_PROTO": "1",
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "1",
        "MAX_ACTIVE_TOKENS": str(pool),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "SWEEPER_ENABLED": "true",
        "ENABLE_RATE_LIMITING": "true",
        "RATE_LIMIT_PER_MINUTE": "100000",  # tests that count the limit set their own
        "DRAIN_SECONDS": "2",
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
    }
    env.update(extra)
    return env


class Stack:
    """One Redis, `instances` gunicorns (2 workers each) on one database, nginx in front."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        pool: int,
        instances: int = 2,
        env: dict | None = None,
        nginx: dict | None = None,
    ):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.pool = pool
        self.redis = ThrowawayRedis()
        self.gunicorns: list[Gunicorn] = []
        self._instances = instances
        self._env = env or {}
        self._nginx_overrides = nginx or {}
        self.nginx: Nginx | None = None
        self.extra_nginx: list[Nginx] = []

    def start(self) -> Stack:
        self.redis.start()
        for i in range(self._instances):
            prom = self.dir / f"prom-{i}"
            prom.mkdir(exist_ok=True)
            env = gunicorn_env(
                self.database_url, self.redis.url, self.pool, PROMETHEUS_MULTIPROC_DIR=str(prom), **self._env
            )
            self.gunicorns.append(Gunicorn(env, workers=2, log_path=self.dir / f"gunicorn-{i}.log"))
        _parallel([g.start for g in self.gunicorns])
        self.nginx = self.add_nginx("nginx", **self._nginx_overrides)
        return self

    def add_nginx(self, name: str, upstreams: list[Gunicorn] | None = None, **overrides: str) -> Nginx:
        """Another nginx (own config, port, logs) in front of some or all of the instances."""
        targets = upstreams if upstreams is not None else self.gunicorns
        nginx = Nginx(self.dir / name, [f"127.0.0.1:{g.port}" for g in targets], **overrides).start()
        self.extra_nginx.append(nginx)
        return nginx

    def stop(self) -> None:
        """Quick shutdown (SIGQUIT) of what still runs: the graceful path is tested on its own."""
        for nginx in self.extra_nginx:
            nginx.stop()
        for g in self.gunicorns:
            if g.proc is not None and g.proc.poll() is None:
                g.signal(signal.SIGQUIT)
        _parallel([g.stop for g in self.gunicorns])
        self.redis.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _parallel(calls) -> None:
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# --- wrk ------------------------------------------------------------------------------


def wrk(url: str, threads: int = 1, connections: int = 8, duration: str = "5s") -> dict:
    """Run wrk once; return requests/s, the non-2xx count, latency figures and the raw output."""
    done = subprocess.run(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    result = {"url": url, "output": out, "rps": None, "non_2xx": 0, "errors": ""}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            result["errors"] = line.strip()
        elif words[:1] == ["Latency"] and len(words) >= 2 and words[1] != "Distribution":
            result["latency_avg"] = words[1]
        elif words[:1] in (["50%"], ["99%"]):
            result["p" + words[0].rstrip("%")] = words[1]
    return result
