"""Configuration: environment, validation, one clear line naming the bad variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service import create_app
from service.config import ConfigError
from service.state import app_state
from tests.procs import ROOT


def test_defaults_to_sqlite_under_instance(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app({"LOG_LEVEL": "WARNING"})
    assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert app.config["SQLALCHEMY_DATABASE_URI"].endswith("instance/tokenpool.sqlite3")
    assert app.config["MAX_ACTIVE_TOKENS"] == 100
    assert app.config["TOKEN_LIFETIME_SECONDS"] == 120
    assert app.config["CHECK_INTERVAL_SECONDS"] == 30


def test_lifetime_in_minutes(monkeypatch):
    monkeypatch.setenv("TOKEN_LIFETIME_MINUTES", "3")
    assert create_app().config["TOKEN_LIFETIME_SECONDS"] == 180


def test_postgres_url_uses_psycopg3(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    assert create_app().config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/db"


def test_production_without_secret_key_stops(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_ACTIVE_TOKENS", "many"),
        ("TOKEN_LIFETIME_SECONDS", "0"),
        ("CHECK_INTERVAL_SECONDS", "1.5"),
        ("POOL_SIZE", "-1"),
        ("APP_ENV", "staging"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_malformed_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv("SECRET_KEY", "x")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        create_app()


def test_bad_value_stops_the_start_with_one_line():
    env = {"PATH": "/usr/bin:/bin", "APP_ENV": "production", "SECRET_KEY": "s", "MAX_ACTIVE_TOKENS": "lots"}
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "configuration error: MAX_ACTIVE_TOKENS must be an integer, got 'lots'"


@pytest.mark.parametrize(
    ("env", "limited"), [("development", False), ("testing", False), ("production", True)]
)
def test_rate_limits_are_on_by_default_in_production_only(monkeypatch, env, limited):
    monkeypatch.delenv("ENABLE_RATE_LIMITING", raising=False)
    app = create_app({"APP_ENV": env, "SECRET_KEY": "x", "LOG_LEVEL": "WARNING"})
    assert app.config["ENABLE_RATE_LIMITING"] is limited
    assert app_state(app).limiter.enabled is limited


def test_rate_limits_can_be_switched_on_in_development(monkeypatch):
    monkeypatch.setenv("ENABLE_RATE_LIMITING", "true")
    app = create_app({"APP_ENV": "development", "LOG_LEVEL": "WARNING"})
    assert app_state(app).limiter.enabled


def start_with_multiproc_dir(folder) -> subprocess.CompletedProcess:
    """`import wsgi` (a flask command's start) in a process of its own with PROMETHEUS_MULTIPROC_DIR.

    Not in this process: a multiprocess folder switches prometheus_client to files process-wide.
    """
    env = {"PATH": "/usr/bin:/bin", "APP_ENV": "development", "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    start = [sys.executable, "-c", "import wsgi"]
    return subprocess.run(start, env=env, capture_output=True, text=True, cwd=ROOT)


def test_a_missing_prometheus_multiproc_dir_is_created(tmp_path):
    folder = tmp_path / "not" / "yet"
    result = start_with_multiproc_dir(folder)
    assert result.returncode == 0, result.stderr
    assert folder.is_dir()


def test_a_prometheus_multiproc_dir_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = start_with_multiproc_dir(tmp_path / "a-file" / "prom")
    assert result.returncode == 1
    assert result.stderr.startswith("configuration error: PROMETHEUS_MULTIPROC_DIR"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # 0 would send heartbeats without pause, or fail every health check at once
        ("EVENT_STREAM_HEARTBEAT_SECONDS", "0", "EVENT_STREAM_HEARTBEAT_SECONDS must be > 0, got 0.0"),
        ("HEALTH_CHECK_TIMEOUT", "0", "HEALTH_CHECK_TIMEOUT must be > 0, got 0.0"),
        ("EVENT_STREAM_POLL_SECONDS", "-1", "EVENT_STREAM_POLL_SECONDS must be >= 0, got -1.0"),
    ],
)
def test_intervals_that_zero_would_break_are_refused(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        create_app({"APP_ENV": "development", "LOG_LEVEL": "WARNING"})
    assert str(refused.value) == message


@pytest.mark.parametrize(
    "name", ["EVENT_STREAM_POLL_SECONDS", "EVENT_STREAM_SECONDS", "HEALTH_CACHE_SECONDS"]
)
def test_settings_whose_zero_means_something_accept_it(monkeypatch, name):
    monkeypatch.setenv(name, "0")
    assert create_app({"APP_ENV": "development", "LOG_LEVEL": "WARNING"}).config[name] == 0
