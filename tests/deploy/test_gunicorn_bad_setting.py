"""A real gunicorn refuses a bad setting at once, with the flask CLI's one line, and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.procs import ROOT, VENV_BIN, Gunicorn, free_port, gunicorn_refuses
from tests.web import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BAD_SETTINGS = [
    {"LOG_LEVEL": "bogus"},
    {"POOL_SIZE": "many"},
    {"SECRET_KEY": ""},  # required in production
    {"APP_ENV": "staging"},
    {"DATABASE_URL": "postgresql+psycopg://app:pw@db:notaport/x"},  # was a driver's traceback per worker
    {"REDIS_URL": "redis://:pw@r:99999/0"},
]


def _env(tmp_path, bad: dict) -> dict:
    return {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "APP_ENV": "production",
        "SECRET_KEY": "test-secret",
        "DATABASE_URL": f"sqlite:///{tmp_path}/never-opened.sqlite3",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "WEB_CONCURRENCY": "2",
        **bad,
    }


def _cli_line(env: dict) -> str:
    command = [str(VENV_BIN / "flask"), "--app", "wsgi", "routes"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda bad: next(iter(bad)))
def test_gunicorn_stops_at_once_on_a_bad_setting_with_the_cli_line(tmp_path, bad):
    env = _env(tmp_path, bad)
    port = free_port()
    env["BIND"] = f"127.0.0.1:{port}"
    started = time.monotonic()
    errors, output = gunicorn_refuses(env)
    took = time.monotonic() - started
    assert took < 20, took
    assert errors == [_cli_line(env)], output
    assert "Listening at" not in output, output  # no socket, no worker
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_gunicorn_with_good_settings_starts_after_the_check(tmp_path):
    env = _env(tmp_path, {})
    env.pop("PATH")
    g = Gunicorn(env, workers=1)
    try:
        g.start()
        assert http_get(g.url + "/healthz")[0] == 200
        assert "configuration error" not in "\n".join(g.log_lines())
    finally:
        g.stop()
        g.log_path.unlink(missing_ok=True)
