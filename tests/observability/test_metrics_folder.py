"""PROMETHEUS_MULTIPROC_DIR on a small, full or read-only file system, under a real gunicorn.

Each test mounts its own tmpfs (root only; skipped elsewhere) and unmounts it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from service import metrics_storage
from tests.procs import Gunicorn, gunicorn_refuses, wait_for, worker_pids
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@contextlib.contextmanager
def tmpfs(path, size: str, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)), "tmpfs", str(path)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory) -> None:
    """Take every free byte of the file system holding `directory`."""
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    assert os.statvfs(directory).f_bavail == 0


def _env(tmp_path, folder) -> dict:
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "LOG_LEVEL": "WARNING",
        "ENABLE_RATE_LIMITING": "false",  # the loop below would reach the per-IP limit
    }


def _gunicorn_refuses(env: dict) -> str:
    """Run gunicorn expecting a refusal; return its one configuration line."""
    lines, output = gunicorn_refuses(env)
    assert len(lines) == 1, output
    return lines[0]


def test_a_metrics_folder_with_too_little_room_stops_the_start_with_one_line(tmp_path):
    with tmpfs(tmp_path / "prom", "1M") as folder:
        line = _gunicorn_refuses(_env(tmp_path, folder))
    assert line.startswith("configuration error: PROMETHEUS_MULTIPROC_DIR folder"), line
    assert "KiB free, needs at least" in line, line


@pytest.mark.parametrize("where", ["folder", "missing-below"])
def test_a_read_only_or_uncreatable_metrics_folder_stops_the_start_with_one_line(tmp_path, where):
    with tmpfs(tmp_path / "ro", "1M", "ro") as mount:
        folder = mount if where == "folder" else mount / "prometheus"
        line = _gunicorn_refuses(_env(tmp_path, folder))
    assert line.startswith("configuration error: PROMETHEUS_MULTIPROC_DIR folder"), line
    assert "Read-only file system" in line, line


def test_a_full_metrics_folder_never_kills_workers_and_shows_in_health(tmp_path):
    size = metrics_storage.MIN_FREE_BYTES + (1 << 20)
    with tmpfs(tmp_path / "prom", f"{size // 1024}k") as folder:
        g = Gunicorn(_env(tmp_path, folder), workers=2)
        try:
            g.start()
            checks = json.loads(http_get(g.url + "/health")[1])["checks"]
            assert checks["metrics_folder"]["status"] == "healthy", checks
            fill(folder)
            before = set(worker_pids(g.proc.pid))
            victim = min(before)
            os.kill(victim, signal.SIGKILL)  # its replacement boots on the full folder
            try:
                wait_for(
                    lambda: len(set(worker_pids(g.proc.pid)) - before) == 1, 30, what="a replacement worker"
                )
            except TimeoutError as timeout:
                files = sorted(os.listdir(folder))
                raise AssertionError(f"{timeout}; victim {victim}; folder {files}; {g.describe()}") from None
            # new series in both workers: 404s, 405s, an unknown method, responses of new sizes
            statuses = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                for path in ("/healthz", "/nothing-here", "/api/tokens/summary", "/health/live"):
                    statuses.append(http_get(g.url + path, timeout=5)[0])
            health = json.loads(http_get(g.url + "/health")[1])["checks"]["metrics_folder"]
            metrics_status = http_get(g.url + "/metrics")[0]
            workers_now = set(worker_pids(g.proc.pid))
            log = g.log_lines()
        finally:
            g.stop()
    boots = [line for line in log if "Booting worker" in line]
    assert len(boots) == 3, boots  # two at start, one replacement: no restart loop
    assert victim not in workers_now and len(workers_now) == 2 and g.proc.returncode == 0
    assert "SIGBUS" not in "\n".join(log) and "signal 7" not in "\n".join(log)
    assert 200 in statuses and all(s in (200, 404, 503) for s in statuses), sorted(set(statuses))
    assert health["status"] == "degraded", health
    assert metrics_status == 200
    assert any("metrics folder" in line and "cannot take more samples" in line for line in log), log[-20:]


def _counted(url: str, method: str, status: str) -> float:
    body = http_get(url + "/metrics")[1].decode()
    wanted = f'flask_http_request_total{{method="{method}",status="{status}"}} '
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(wanted))


def test_restarted_workers_leave_no_files_and_every_request_stays_counted(tmp_path):
    folder = tmp_path / "prom"
    env = {
        **_env(tmp_path, folder),
        "ENABLE_RATE_LIMITING": "false",
        "GUNICORN_MAX_REQUESTS": "25",  # each worker restarts after 25 requests
        "GUNICORN_MAX_REQUESTS_JITTER": "1",
    }
    sent = 300
    g = Gunicorn(env, workers=2)
    try:
        g.start()
        for _ in range(sent):
            assert http_get(g.url + "/no-such-page", timeout=10)[0] == 404
        wait_for(lambda: len(worker_pids(g.proc.pid)) == 2, 30, what="two workers after the last restart")
        counted = _counted(g.url, "GET", "404")
        files = sorted(os.listdir(folder))
        boots = [line for line in g.log_lines() if "Booting worker" in line]
    finally:
        g.stop()
    assert len(boots) >= sent // 25, len(boots)  # the workers did restart, many times
    assert counted == sent, (counted, files)  # none lost with a dead worker, none counted twice
    pids = {name.rsplit("_", 1)[1] for name in files if name.endswith(".db")} - {"archive.db"}
    assert len(pids) <= 2, files  # the live workers' files and the archive, nothing more
