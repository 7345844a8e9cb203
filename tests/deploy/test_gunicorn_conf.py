"""gunicorn.conf.py's worker start-up hook, run in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
