"""Setting names of other guides (aliases), `flask config check`, and their docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import config as settings
from service.config import ALIASES, ConfigError, engine_options
from service.config_cli import gunicorn_settings
from tests.conftest import make_app
from tests.procs import ROOT

ALIAS_NAMES = [alias.name for alias in ALIASES]
ENV_NAMES = [
    *ALIAS_NAMES,
    *{alias.canonical for alias in ALIASES},
    "LOG_FILE",
    "DATABASE_URL",
    "REDIS_URL",
]


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Set variables for one test (every alias and canonical name starts unset); read the settings."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)

    def read(**variables: str) -> dict:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return settings._from_environment(str(tmp_path / "instance"), "testing")

    return read


@pytest.mark.parametrize(
    ("alias", "value", "setting", "expected"),
    [
        ("MAX_POOL_SIZE", "7", "POOL_SIZE", 7),
        ("POOL_RECYCLE", "600", "POOL_RECYCLE_SECONDS", 600),
        ("USE_JSON_LOGS", "true", "LOG_FORMAT", "json"),
        ("USE_JSON_LOGS", "0", "LOG_FORMAT", "console"),
        ("RATE_LIMIT_MAX", "42", "RATE_LIMIT_PER_MINUTE", 42),
        ("TRACING_ENABLED", "true", "OTEL_ENABLED", True),
        ("PHX_HOST", "tokens.example.com", "PUBLIC_URL", "https://tokens.example.com"),
    ],
)
def test_an_accepted_alias_gives_its_setting(env, alias, value, setting, expected):
    assert env(**{alias: value})[setting] == expected


def test_phx_host_gives_the_public_url_of_the_app(env, monkeypatch):
    monkeypatch.setenv("PHX_HOST", "tokens.example.com:8443")
    app = make_app("sqlite://")
    assert app.config["PUBLIC_URL"] == "https://tokens.example.com:8443"


def test_the_canonical_name_wins_over_its_alias(env):
    found = env(POOL_SIZE="3", MAX_POOL_SIZE="7", LOG_FORMAT="console", USE_JSON_LOGS="true")
    assert found["POOL_SIZE"] == 3 and found["LOG_FORMAT"] == "console"


@pytest.mark.parametrize(
    ("alias", "value", "message"),
    [
        ("MAX_POOL_SIZE", "lots", "MAX_POOL_SIZE must be an integer, got 'lots'"),
        ("MAX_POOL_SIZE", "0", "MAX_POOL_SIZE must be >= 1, got 0"),
        ("USE_JSON_LOGS", "maybe", "USE_JSON_LOGS must be a boolean (true/false), got 'maybe'"),
        ("TRACING_ENABLED", "yes please", "TRACING_ENABLED must be a boolean (true/false), got 'yes please'"),
        ("ENABLE_FILE_LOGGING", "x", "ENABLE_FILE_LOGGING must be a boolean (true/false), got 'x'"),
        ("PHX_HOST", "https://x/", "PHX_HOST must be a host name like tokens.example.com, got 'https://x/'"),
        (
            "RATE_LIMIT_TTL",
            "30",
            "RATE_LIMIT_TTL must be 60 (limits count per minute; set RATE_LIMIT_PER_MINUTE), got 30",
        ),
    ],
)
def test_a_bad_alias_value_names_the_alias(env, alias, value, message):
    with pytest.raises(ConfigError) as raised:
        env(**{alias: value})
    assert str(raised.value) == message


def test_rate_limit_ttl_of_60_is_what_happens_anyway(env):
    assert env(RATE_LIMIT_TTL="60", RATE_LIMIT_MAX="30")["RATE_LIMIT_PER_MINUTE"] == 30


def test_log_dir_and_enable_file_logging_choose_the_log_file(env, tmp_path):
    assert env()["LOG_FILE"] is None
    assert env(LOG_DIR="/var/log/tokenpool")["LOG_FILE"] == "/var/log/tokenpool/tokenpool.log"
    assert env(ENABLE_FILE_LOGGING="false")["LOG_FILE"] is None  # LOG_DIR still set: off wins
    assert env(ENABLE_FILE_LOGGING="true")["LOG_FILE"] == "/var/log/tokenpool/tokenpool.log"
    assert env(LOG_FILE="/srv/app.log")["LOG_FILE"] == "/srv/app.log"  # LOG_FILE wins over both


def test_enable_file_logging_alone_logs_under_the_instance_folder(env, tmp_path):
    expected = str(tmp_path / "instance" / "logs" / "tokenpool.log")
    assert env(ENABLE_FILE_LOGGING="true")["LOG_FILE"] == expected


def test_pool_recycle_reaches_the_engine(env):
    found = env(POOL_RECYCLE="600", DATABASE_URL="postgresql://u@h/db")
    assert engine_options(found)["pool_recycle"] == 600


def test_an_alias_that_is_not_accepted_changes_nothing(env):
    assert env(JAEGER_ENDPOINT="http://jaeger:14268/api/traces") == env()


@pytest.mark.parametrize(
    ("variables", "bind", "timeout"),
    [
        ({}, "127.0.0.1:8000", 30),
        ({"PORT": "9000"}, "0.0.0.0:9000", 30),
        ({"PORT": "9000", "BIND": "10.0.0.5:8000"}, "10.0.0.5:8000", 30),
        ({"REQUEST_TIMEOUT": "45"}, "127.0.0.1:8000", 45),
        ({"REQUEST_TIMEOUT": "45", "GUNICORN_TIMEOUT": "20"}, "127.0.0.1:8000", 20),
    ],
)
def test_gunicorn_reads_port_and_request_timeout(env, monkeypatch, variables, bind, timeout):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    found = gunicorn_settings()
    assert (found["bind"], found["timeout"]) == (bind, timeout)


def test_docs_table_lists_every_alias_as_the_code_has_it():
    text = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \| (yes|no) \|", text, re.M)
    }
    assert rows == {a.name: (a.canonical, "yes" if a.accepted else "no") for a in ALIASES}


def test_env_example_lists_every_alias():
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert set(ALIAS_NAMES) <= listed


# --- flask config check -------------------------------------------------------------------------


def test_config_check_prints_settings_with_secrets_masked(env, monkeypatch):
    for name, value in {
        "SECRET_KEY": "s3cret-key-value",
        "ADMIN_API_KEY": "admin-key-value",
        "METRICS_TOKEN": "metrics-token-value",
        "REDIS_URL": "redis://:redis-password@127.0.0.1:6379/0",
        "RATE_LIMIT_MAX": "42",
        "JAEGER_ENDPOINT": "http://jaeger:14268/api/traces",
        "LOG_FORMAT": "json",
        "USE_JSON_LOGS": "false",
    }.items():
        monkeypatch.setenv(name, value)
    app = make_app("postgresql+psycopg://app:db-password@db.invalid:5432/tokenpool")  # never connects
    result = app.test_cli_runner().invoke(args=["config", "check"])
    assert result.exit_code == 0, result.output
    out = result.output
    secrets = ("s3cret-key-value", "admin-key-value", "metrics-token-value", "redis-password", "db-password")
    for secret in secrets:
        assert secret not in out
    lines = set(out.splitlines())
    assert {
        "SECRET_KEY=***",
        "ADMIN_API_KEY=***",
        "METRICS_TOKEN=***",
        "REDIS_URL=redis://:***@127.0.0.1:6379/0",
        "SQLALCHEMY_DATABASE_URI=postgresql+psycopg://app:***@db.invalid:5432/tokenpool",
        "RATE_LIMIT_PER_MINUTE=42",
        "MAX_ACTIVE_TOKENS=5",
        "gunicorn.bind=127.0.0.1:8000",
    } <= lines
    assert any(line.startswith("alias: RATE_LIMIT_MAX gives RATE_LIMIT_PER_MINUTE") for line in lines)
    assert any(line.startswith("warning: JAEGER_ENDPOINT is set but not read") for line in lines)
    assert "warning: USE_JSON_LOGS is ignored: LOG_FORMAT is set and wins" in lines


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:redis-password@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            "redis+sentinel://:pw1@s1:26379,s2:26379/mymaster",
            "redis+sentinel://:***@s1:26379,s2:26379/mymaster",
        ),
        # SQLAlchemy reads a password with an unescaped /, # or @ as written: none of it shows
        ("postgresql+psycopg://app:pa/ss-word@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        ("postgresql+psycopg://app:pa@ss-word@db/x", "postgresql+psycopg://app:***@db/x"),
        ("rediss://u:pa#ss-word@r:6380/0", "rediss://u:***@r:6380/0"),
        # libpq and redis-py also read a password from the query string
        ("postgresql+psycopg://app@db/x?password=pw2", "postgresql+psycopg://app@db/x?password=***"),
        (
            "postgresql://db/x?sslmode=require&sslpassword=pw3",
            "postgresql://db/x?sslmode=require&sslpassword=***",
        ),
        ("redis://r:6379/0?password=pw4&db=1", "redis://r:6379/0?password=***&db=1"),
        ("redis+sentinel://s1:26379/m?Password=pw5", "redis+sentinel://s1:26379/m?Password=***"),
        ("sqlite:////srv/tokenpool.sqlite3", "sqlite:////srv/tokenpool.sqlite3"),
        ("redis://user@r:6379/0", "redis://user@r:6379/0"),
    ],
)
def test_mask_url_hides_every_password_a_driver_would_read(url, shown):
    assert settings.mask_url(url) == shown


def test_config_check_masks_a_password_in_the_query_string(tmp_path):
    result = _flask_config_check(
        DATABASE_URL=f"sqlite:///{tmp_path}/c.sqlite3",
        REDIS_URL="redis://127.0.0.1:6379/0?password=query-password",
        RATELIMIT_STORAGE_URI="redis://:pa%2Fss-word@127.0.0.1:6379/1",
    )
    assert result.returncode == 0, result.stderr
    assert "query-password" not in result.stdout and "ss-word" not in result.stdout
    assert "REDIS_URL=redis://127.0.0.1:6379/0?password=***" in result.stdout.splitlines()


def _flask_config_check(**variables: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "APP_ENV": "development", "LOG_LEVEL": "WARNING", **variables}
    flask = Path(sys.executable).with_name("flask")
    return subprocess.run(
        [str(flask), "--app", "wsgi", "config", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        ({"MAX_POOL_SIZE": "lots"}, "configuration error: MAX_POOL_SIZE must be an integer, got 'lots'"),
        ({"WEB_CONCURRENCY": "lots"}, "configuration error: WEB_CONCURRENCY must be an integer, got 'lots'"),
        (
            {"GUNICORN_KEEPALIVE": "x"},
            "configuration error: GUNICORN_KEEPALIVE must be a whole number, got 'x'",
        ),
        # URLs: one line naming the variable, the password masked, never a driver's traceback
        (
            {"DATABASE_URL": "postgresql+psycopg://app:pw1@db:notaport/x"},
            "configuration error: DATABASE_URL is not a database URL,"
            " got 'postgresql+psycopg://app:***@db:notaport/x'",
        ),
        (
            {"DATABASE_URL": "tokenpool.sqlite3"},
            "configuration error: DATABASE_URL is not a database URL, got 'tokenpool.sqlite3'",
        ),
        (
            {"DATABASE_URL": "mysql://app:pw2@db/x"},
            "configuration error: DATABASE_URL must be a sqlite:/// or postgresql:// URL, got 'mysql://app:***@db/x'",
        ),
        (
            {"DATABASE_URL": "postgresql+asyncpg://db/x"},
            "configuration error: DATABASE_URL names the driver 'postgresql+asyncpg', which is not installed",
        ),
        (
            {"DATABASE_URL": "postgresql+psycopg://db:65536/x"},
            "configuration error: DATABASE_URL's port must be 1-65535, got 65536",
        ),
        (
            {"DATABASE_DIRECT_URL": "postgres://app:pw6@db:notaport/x"},
            "configuration error: DATABASE_DIRECT_URL is not a database URL,"
            " got 'postgresql+psycopg://app:***@db:notaport/x'",
        ),
        (
            {"REDIS_URL": "http://:pw3@r:6379/0"},
            "configuration error: REDIS_URL must be a URL of redis:// or rediss:// or redis+sentinel://,"
            " got 'http://:***@r:6379/0'",
        ),
        (
            {"REDIS_URL": "redis://:pa#pw4@r:6379/0"},
            "configuration error: REDIS_URL is not a Redis URL (a port outside 1-65535, or a / # ? @ in the"
            " password not %-encoded?), got 'redis://:***@r:6379/0'",
        ),
        (
            {"REDIS_URL": "redis+sentinel://:pw5@s1:26379,s2:x/mymaster"},
            "configuration error: REDIS_URL: each sentinel must be host:port (port 1-65535),"
            " got 'redis+sentinel://:***@s1:26379,s2:x/mymaster'",
        ),
        (
            {"RATELIMIT_STORAGE_URI": "redis://r:99999/1"},
            "configuration error: RATELIMIT_STORAGE_URI is not a Redis URL (a port outside 1-65535,"
            " or a / # ? @ in the password not %-encoded?), got 'redis://r:99999/1'",
        ),
    ],
)
def test_config_check_stops_with_one_line_on_a_bad_value(tmp_path, variables, line):
    result = _flask_config_check(**{"DATABASE_URL": f"sqlite:///{tmp_path}/c.sqlite3", **variables})
    assert result.returncode == 1
    assert result.stderr.strip() == line
    assert "configuration OK" not in result.stdout
