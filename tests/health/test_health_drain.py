"""Graceful shutdown of a real gunicorn (2 workers): readiness fails at once, liveness holds, exit in time.

The database is one this test creates on the shared PostgreSQL server and drops afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.procs import ROOT, VENV_BIN, Gunicorn, wait_for
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DRAIN_SECONDS = 3
GRACEFUL_TIMEOUT = 10


def _app_env(database_url: str) -> dict:
    return {
        "DATABASE_URL": database_url,
        "MAX_ACTIVE_TOKENS": "5",
        "POOL_SIZE": "2",
        "POOL_MAX_OVERFLOW": "1",
        "DRAIN_SECONDS": str(DRAIN_SECONDS),
        "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
    }


def _flask(env: dict, *args: str) -> None:
    full_env = {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "APP_ENV": "production",
        "SECRET_KEY": "test-secret",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def server(fresh_pg_database):
    env = _app_env(fresh_pg_database)
    _flask(env, "db", "upgrade")
    _flask(env, "tokens", "seed")
    gunicorn = Gunicorn(env, workers=2)
    try:
        yield gunicorn.start(wait="/health/ready")
    finally:
        gunicorn.stop()
        gunicorn.log_path.unlink(missing_ok=True)


def test_sigterm_fails_readiness_at_once_keeps_liveness_and_exits_in_time(server):
    for _ in range(10):  # both workers are up and ready
        assert http_get(server.url + "/health/ready")[0] == 200
    assert http_get(server.url + "/health")[0] == 200

    server.signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_for(lambda: http_get(server.url + "/health/ready", timeout=2)[0] == 503, 2, what="readiness 503")
    noticed = time.monotonic() - sent
    assert noticed < 1, noticed

    # while draining, every worker answers: readiness 503 naming the check, liveness 200
    ready, live = [], []
    while time.monotonic() - sent < DRAIN_SECONDS - 1:
        status, body, headers = http_get(server.url + "/health/ready", timeout=2)
        ready.append((status, json.loads(body)))
        live.append(http_get(server.url + "/health/live", timeout=2)[0])
        time.sleep(0.05)
    assert len(ready) >= 10
    assert {status for status, _ in ready} == {503}
    assert all(body["details"]["failed_checks"] == ["draining"] for _, body in ready)
    assert set(live) == {200}
    assert http_get(server.url + "/healthz", timeout=2)[0] == 200
    assert http_get(server.url + "/api/tokens/summary", timeout=2)[0] == 200  # traffic still served

    returncode = server.proc.wait(timeout=GRACEFUL_TIMEOUT + 5)
    took = time.monotonic() - sent
    assert returncode == 0
    assert DRAIN_SECONDS - 0.5 <= took < GRACEFUL_TIMEOUT, took
    log = "\n".join(server.log_lines())
    assert "SIGKILL" not in log and "WORKER TIMEOUT" not in log, log
    assert "Shutting down: Master" in log, log
    with pytest.raises(OSError):  # nothing listens any more
        http_get(server.url + "/healthz", timeout=1)
