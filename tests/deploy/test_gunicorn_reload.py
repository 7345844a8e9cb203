"""A HUP reload retires workers one by one: the port stays open and every connection is served."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.procs import Gunicorn, http_get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_hup_reload_keeps_serving_every_connection(tmp_path):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DRAIN_SECONDS": "1",
        "LOG_LEVEL": "WARNING",
        "ENABLE_RATE_LIMITING": "false",
    }
    g = Gunicorn(env, workers=2)
    try:
        g.start()
        workers = lambda: {p.pid for p in psutil.Process(g.proc.pid).children()}  # noqa: E731
        old = workers()
        g.signal(signal.SIGHUP)
        # the old workers drain (1 s) and go; the new ones share the master's port
        wait_for(lambda: not old & workers(), 30, what="old workers gone")
        statuses = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            statuses.append(http_get(g.url + "/healthz", timeout=3)[0])
        assert g.proc.poll() is None
    finally:
        g.stop()
        g.log_path.unlink(missing_ok=True)
    assert len(statuses) > 10 and set(statuses) == {200}, statuses[:20]
