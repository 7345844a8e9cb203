"""gunicorn.conf.py's worker hooks: start-up in a process of its own, exit on a test app."""

from __future__ import annotations

import runpy
import subprocess
import sys
import types
from pathlib import Path

from service.state import app_state

ROOT = Path(__file__).resolve().parents[2]


def test_worker_start_freezes_the_loaded_app_out_of_the_collector():
    script = (
        "import gc, runpy, types, wsgi\n"
        "hooks = runpy.run_path('gunicorn.conf.py')\n"
        "before = gc.get_freeze_count()\n"
        "hooks['post_worker_init'](types.SimpleNamespace(wsgi=wsgi.app, run=lambda: None))\n"
        "print(before, gc.get_freeze_count())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "APP_ENV": "development", "LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    before, after = map(int, out.split()[-2:])
    assert before == 0 and after > 50_000  # the app's modules and objects, not a handful


class Recorder:
    def __init__(self):
        self.calls = []

    def stop(self, timeout=None):
        self.calls.append("stop")

    def flush(self):
        self.calls.append("flush")


def test_worker_exit_stops_the_background_threads_and_sends_buffered_figures(app):
    """The hook reads the app's state (it once read keys the app no longer had and did nothing)."""
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    state = app_state(app)
    sweeper, publisher, figures = Recorder(), Recorder(), Recorder()
    state.sweeper, state.publisher, state.monitoring = sweeper, publisher, figures
    hooks["worker_exit"](None, types.SimpleNamespace(wsgi=app))
    assert sweeper.calls == publisher.calls == ["stop"] and figures.calls == ["flush"]
    hooks["worker_exit"](None, types.SimpleNamespace())  # a worker that never loaded the app


def test_worker_exit_ends_the_held_streams_first(app):
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    state = app_state(app)
    calls = []
    state.sweeper = state.publisher = types.SimpleNamespace(stop=lambda timeout=None: calls.append("stop"))
    worker = types.SimpleNamespace(
        wsgi=app, end_streams=lambda timeout: calls.append(("end_streams", timeout))
    )
    hooks["worker_exit"](None, worker)
    assert calls[0] == ("end_streams", 2.0) and calls[1:] == ["stop", "stop"]


def _settings(env: dict) -> subprocess.CompletedProcess:
    script = (
        "import runpy\n"
        "c = runpy.run_path('gunicorn.conf.py')\n"
        "print(c['bind'], c['workers'], c['worker_class'], c['threads'], c['timeout'],"
        " c['graceful_timeout'], c['keepalive'], c['max_requests'], c['loglevel'], c['DRAIN_SECONDS'])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"} | env,
        capture_output=True,
        text=True,
    )


def test_every_variable_left_blank_as_in_env_example_means_its_default():
    """`.env.example` lists some variables blank (WEB_CONCURRENCY=, PORT=); loaded into the
    environment (`set -a; . ./.env`, compose, systemd), blank must mean the default."""
    names = [
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    ]
    blank = {name: "" for name in names} | {"PROMETHEUS_MULTIPROC_DIR": ""}
    run = _settings(blank)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:1] == ["127.0.0.1:8000"]
    assert run.stdout.split()[2:] == [
        "service.gunicorn_worker.StreamingSyncWorker",
        "1",
        "30",
        "30",
        "5",
        "1000000",
        "info",
        "5.0",
    ]


def test_a_setting_that_is_not_a_number_stops_with_one_line_naming_it():
    run = _settings({"WEB_CONCURRENCY": "four"})
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == ["WEB_CONCURRENCY must be a whole number, got 'four'"]
