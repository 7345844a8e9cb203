"""Log files: rotation shared by several workers, dated rotation and retention, full disks, bad paths."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.config import ConfigError
from service.health import state as health_state
from service.log_files import file_handler, prune
from service.logging_setup import ConsoleFormatter, configure_logging
from tests.conftest import make_app
from tests.procs import ROOT, VENV_BIN, Gunicorn
from tests.web import http_get

FILE_SETTINGS = {
    "LOG_ROTATE": "size",
    "LOG_FILE_MAX_BYTES": 1024,
    "LOG_FILE_BACKUPS": 5,
    "LOG_RETENTION_DAYS": 0,
}


def json_lines(folder: Path, name: str) -> list[dict]:
    """Every JSON line of `name` and its rotated files (lock files left out)."""
    found = []
    for path in sorted(folder.glob(name + "*")):
        found += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return found


@pytest.mark.e2e
def test_several_gunicorn_workers_rotating_one_file_lose_no_line(tmp_path):
    log = tmp_path / "app.log"
    env = {
        "LOG_FILE": str(log),
        "LOG_FILE_MAX_BYTES": "1024",
        "LOG_FILE_BACKUPS": "5000",
        "LOG_LEVEL": "INFO",
        "ENABLE_RATE_LIMITING": "false",
        "SWEEPER_ENABLED": "false",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    sent = [f"rotate-{n}" for n in range(1500)]
    with Gunicorn(env, workers=4) as server:

        def get(request_id: str) -> int:
            return http_get(server.url + "/api", headers={"X-Request-ID": request_id})[0]

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(get, sent)) == {200}
    rotated = [p for p in tmp_path.glob("app.log.*")]
    assert len(rotated) > 20  # the run rotated many times, with four writers at once
    access = [x["request_id"] for x in json_lines(tmp_path, "app.log") if x["logger"] == "tokenpool.access"]
    assert sorted(access) == sorted(sent)  # each line exactly once, none lost


def test_daily_rotation_uses_dated_names_and_retention_deletes_old_files(tmp_path):
    log = tmp_path / "app.log"
    old, recent = tmp_path / "app.log.2020-01-01", tmp_path / "app.log.2026-01-02"
    old.write_text("{}\n")
    recent.write_text("{}\n")
    now = time.time()
    os.utime(old, (now - 40 * 86400, now - 40 * 86400))
    os.utime(recent, (now - 2 * 86400, now - 2 * 86400))
    settings = {**FILE_SETTINGS, "LOG_ROTATE": "daily", "LOG_FILE_MAX_BYTES": 10**6, "LOG_RETENTION_DAYS": 30}
    handler = file_handler(str(log), settings)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        handler.handle(logging.makeLogRecord({"msg": "before midnight"}))
        midnight = handler.rolloverAt
        assert datetime.fromtimestamp(midnight, UTC).strftime("%H:%M:%S") == "00:00:00"
        handler._get_current_time = lambda: midnight + 5  # a clock past midnight UTC
        handler.handle(logging.makeLogRecord({"msg": "after midnight"}))
    finally:
        handler.close()
    day = datetime.fromtimestamp(midnight - 86400, UTC).strftime("%Y-%m-%d")
    assert (tmp_path / f"app.log.{day}").read_text() == "before midnight\n"
    assert log.read_text() == "after midnight\n"
    assert not old.exists() and recent.exists()  # older than LOG_RETENTION_DAYS: deleted at rotation


def test_prune_keeps_the_live_file_and_recent_rotations(tmp_path):
    (tmp_path / "app.log").write_text("live")
    for name, days in (("app.log.1", 3), ("app.log.2", 9), ("other.log.1", 30)):
        path = tmp_path / name
        path.write_text("x")
        os.utime(path, (time.time() - days * 86400,) * 2)
    assert [Path(p).name for p in prune(str(tmp_path / "app.log"), 7)] == ["app.log.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "other.log.1"]


@pytest.mark.parametrize("setting", ["LOG_FILE", "LOG_ERROR_FILE", "LOG_EXCEPTIONS_FILE"])
def test_a_log_file_in_a_missing_folder_stops_the_start_with_one_line(tmp_path, setting):
    missing = tmp_path / "no-such-folder" / "app.log"
    with pytest.raises(ConfigError, match=f"^{setting} is in a folder that does not exist"):
        make_app("sqlite://", **{setting: str(missing)})
    env = {**os.environ, "APP_ENV": "development", setting: str(missing), "DATABASE_URL": "sqlite://"}
    done = subprocess.run(
        [str(VENV_BIN / "flask"), "--app", "wsgi", "db", "current"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"configuration error: {setting} is in a folder that does not exist: {missing.parent}"
    ]


def test_bad_rotation_setting_is_refused(monkeypatch):
    monkeypatch.setenv("LOG_ROTATE", "hourly")
    with pytest.raises(ConfigError, match="^LOG_ROTATE must be one of size, daily, external"):
        make_app("sqlite://")


def test_a_full_disk_loses_lines_quietly_and_health_says_degraded(sqlite_url, tmp_path, capfd):
    full = tmp_path / "app.log"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC, like a full file system
    app = make_app(sqlite_url, LOG_FILE=str(full), LOG_LEVEL="INFO")
    client = app.test_client()
    capfd.readouterr()
    for _ in range(30):
        assert client.get("/api").status_code == 200
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count("cannot write log file") == 1 and "No space left on device" in err
    health_state.clear_cache()
    check = client.get("/health").get_json()["checks"]["log_files"]
    assert check["status"] == "degraded"
    assert check["files"]["LOG_FILE"]["lost_lines"] >= 30
    assert check["files"]["LOG_FILE"]["last_error"] == "OSError"
    assert str(tmp_path) not in json.dumps(check)  # setting names, never host paths


def test_health_reports_a_nearly_full_log_file_system(sqlite_url, tmp_path, monkeypatch):
    import shutil

    from service.health import checks

    logs = tmp_path / "logs"
    logs.mkdir()
    app = make_app(sqlite_url, LOG_FILE=str(logs / "app.log"), LOG_ERROR_FILE=str(tmp_path / "errors.log"))
    real = shutil.disk_usage

    def usage(path):
        total = real(path)
        if str(path).startswith(str(logs)):
            return type(total)(total.total, total.total - 1024, 1024)  # 1 KiB left
        return total

    monkeypatch.setattr(checks.shutil, "disk_usage", usage)
    check = app.test_client().get("/health").get_json()["checks"]["log_files"]
    assert check["status"] == "degraded"
    assert check["files"]["LOG_FILE"]["status"] == "degraded"
    assert check["files"]["LOG_ERROR_FILE"]["status"] == "healthy"


def test_health_without_log_files_is_healthy(sqlite_url):
    check = make_app(sqlite_url).test_client().get("/health").get_json()["checks"]["log_files"]
    assert check == {"status": "healthy", "configured": False, "latency_ms": check["latency_ms"]}


def test_error_log_and_exceptions_log_take_their_share(tmp_path):
    dead = "postgresql+psycopg://postgres@127.0.0.1:1/gone"
    app = make_app(
        dead,
        LOG_LEVEL="INFO",
        LOG_FILE=str(tmp_path / "app.log"),
        LOG_ERROR_FILE=str(tmp_path / "errors.log"),
        LOG_EXCEPTIONS_FILE=str(tmp_path / "exceptions.log"),
    )

    def boom():
        raise RuntimeError("nobody expected this")

    app.add_url_rule("/boom", "boom", boom)
    client = app.test_client()
    client.get("/api/tokens/not-a-uuid")  # 400: a warning
    client.get("/api/tokens/summary")  # 503: an error, the database is down
    client.get("/boom")  # 500: an unhandled exception
    everything = json_lines(tmp_path, "app.log")
    errors = json_lines(tmp_path, "errors.log")
    exceptions = json_lines(tmp_path, "exceptions.log")
    assert {"WARNING", "ERROR", "INFO"} <= {x["level"] for x in everything}
    assert sorted(x["error_code"] for x in errors) == ["INTERNAL_ERROR", "SERVICE_UNAVAILABLE"]
    assert [x["error_code"] for x in exceptions] == ["INTERNAL_ERROR"]
    assert "RuntimeError: nobody expected this" in exceptions[0]["exc_info"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_follows_the_stream_written_to(monkeypatch):
    written = io.StringIO()  # stdout redirected to a file, stderr still a terminal
    monkeypatch.setattr(sys, "stdout", written)
    monkeypatch.setattr(sys, "stderr", Terminal())
    configure_logging({"LOG_FORMAT": "console", "LOG_LEVEL": "INFO"})
    logging.getLogger("tokenpool.test_colour").warning("plain text please")
    assert "plain text please" in written.getvalue() and "\033[" not in written.getvalue()

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    configure_logging({"LOG_FORMAT": "console", "LOG_LEVEL": "INFO"})
    logging.getLogger("tokenpool.test_colour").warning("colour please")
    assert "\033[33m" in terminal.getvalue()
    configure_logging({"LOG_FORMAT": "console", "LOG_LEVEL": "WARNING"})


def test_console_formatter_without_colour_writes_no_escape_codes():
    record = logging.makeLogRecord({"msg": "x", "levelname": "ERROR", "request_id": "-"})
    assert "\033" not in ConsoleFormatter(colour=False).format(record)


def test_rotation_survives_threads_of_one_worker(tmp_path):
    handler = file_handler(str(tmp_path / "app.log"), {**FILE_SETTINGS, "LOG_FILE_BACKUPS": 1000})
    handler.setFormatter(logging.Formatter("%(message)s"))

    def write(n: int) -> None:
        for i in range(200):
            handler.handle(logging.makeLogRecord({"msg": f"t{n}-{i}"}))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handler.close()
    lines = []
    for path in tmp_path.glob("app.log*"):
        lines += path.read_text().splitlines()
    assert sorted(lines) == sorted(f"t{n}-{i}" for n in range(4) for i in range(200))
