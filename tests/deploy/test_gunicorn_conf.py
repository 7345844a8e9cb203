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

    def stop(self):
        self.calls.append("stop")

    def flush(self):
        self.calls.append("flush")


def test_worker_exit_stops_the_sweeper_and_sends_buffered_figures(app):
    """The hook reads the app's state (it once read keys the app no longer had and did nothing)."""
    hooks = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    state = app_state(app)
    sweeper, figures = Recorder(), Recorder()
    state.sweeper, state.monitoring = sweeper, figures
    hooks["worker_exit"](None, types.SimpleNamespace(wsgi=app))
    assert sweeper.calls == ["stop"] and figures.calls == ["flush"]
    hooks["worker_exit"](None, types.SimpleNamespace())  # a worker that never loaded the app
