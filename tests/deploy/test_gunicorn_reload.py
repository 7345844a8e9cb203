"""A HUP reload retires workers one by one: the port stays open and every connection is served."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.procs import Gunicorn, wait_for, worker_pids
from tests.web import http_get

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
    answers: list[tuple[float, int | str]] = []  # (sent at, status or the connection error's name)
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                answers.append((sent, http_get(g.url + "/healthz", timeout=3)[0]))
            except OSError as exc:  # refused or reset: the port closed, or a connection was dropped
                answers.append((sent, type(exc).__name__))

    asking = threading.Thread(target=keep_asking)
    try:
        g.start()
        old = set(worker_pids(g.proc.pid))
        asking.start()
        wait_for(lambda: len(answers) >= 10, 10, what="requests before the reload")
        hup_at = time.monotonic()
        g.signal(signal.SIGHUP)
        # the old workers drain (1 s) and go while the requests go on; the new ones share the master's port
        wait_for(lambda: not old & set(worker_pids(g.proc.pid)), 30, what="old workers gone")
        gone_at, served = time.monotonic(), len(answers)
        wait_for(lambda: len(answers) >= served + 10, 10, what="requests to the new workers")
        assert g.proc.poll() is None
    finally:
        stop.set()
        if asking.is_alive():
            asking.join(10)
        g.stop()
        g.log_path.unlink(missing_ok=True)
    statuses = [status for _, status in answers]
    assert len(statuses) > 30 and set(statuses) == {200}, [s for s in statuses if s != 200][:20]
    assert [sent for sent, _ in answers if hup_at <= sent < gone_at], "no request during the reload"
