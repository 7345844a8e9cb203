"""Settings of the app: defaults per environment, then environment variables, then
`instance/config.py`, then the overrides given to `create_app`.

`load_config` reads every setting of the app and checks them all once, so a bad
value stops the start with one line naming the variable. Two kinds of variables
are read elsewhere, before or beside any app: gunicorn.conf.py's process
settings (BIND, PORT, WEB_CONCURRENCY, GUNICORN_*, DRAIN_SECONDS), and
PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads itself (its folder is
checked by service/metrics_storage.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import overload
from urllib.parse import urlsplit

from limits import parse as parse_limit
from redis.connection import parse_url as redis_parse_url
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .deadline import BoundedQueuePool, Deadline
from .log_files import ROTATIONS, check_folders

ENVIRONMENTS = ("development", "testing", "production")


class ConfigError(RuntimeError):
    """A configuration value is missing or malformed; the message names it."""


def _env(name: str) -> tuple[str, str | None]:
    """(the variable that gave setting `name` its value, that raw value); None when unset or blank.

    `name` itself wins; else the first accepted alias of ALIASES that is set, its
    value converted. A bad alias value raises ConfigError naming the alias.
    """
    raw = os.environ.get(name)
    if raw is not None and raw.strip():
        return name, raw
    for alias in _DIRECT_ALIASES.get(name, ()):
        raw = os.environ.get(alias.name)
        if raw is not None and raw.strip():
            return alias.name, alias.convert(raw) if alias.convert else raw
    return name, None


def _int(name: str, default: int, *, minimum: int = 0) -> int:
    name, raw = _env(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(name: str, default: float | None, *, positive: bool = False) -> float | None:
    """A number of seconds (or other float) from the environment: >= 0, or > 0 with `positive`
    (an interval that paces a loop, or a timeout that 0 would make fail at once); `default`
    when unset or blank."""
    name, raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {raw!r}")


def _bool(name: str, default: bool | None) -> bool | None:
    name, raw = _env(name)
    return default if raw is None else _parse_bool(name, raw)


@overload
def _str(name: str, default: str) -> str: ...
@overload
def _str(name: str, default: None) -> str | None: ...


def _str(name: str, default: str | None) -> str | None:
    _name, raw = _env(name)
    return default if raw is None else raw.strip()


def _json_logs(raw: str) -> str:
    return "json" if _parse_bool("USE_JSON_LOGS", raw) else "console"


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$")


def _https_origin(raw: str) -> str:
    """PHX_HOST (a host name, as Phoenix's guides use it) -> PUBLIC_URL https://host."""
    host = raw.strip()
    if not _HOST.match(host):
        raise ConfigError(f"PHX_HOST must be a host name like tokens.example.com, got {raw!r}")
    return f"https://{host}"


@dataclass(frozen=True)
class Alias:
    """A setting name other guides use, and the name this service reads instead.

    `accepted`: the alias works (canonical name unset or blank: the alias gives
    the value; both set: the canonical name wins). `convert`: alias value ->
    canonical value (None: the same value). `direct`: `_env` applies it; False
    when a dedicated reader combines it (LOG_DIR) or gunicorn.conf.py reads it.
    """

    name: str
    canonical: str
    accepted: bool
    meaning: str
    convert: Callable[[str], str] | None = None
    direct: bool = True


# The one table of aliases: docs/CONFIGURATION.md shows it, `flask config check` reports their use.
ALIASES = (
    Alias(
        "REQUEST_TIMEOUT",
        "GUNICORN_TIMEOUT",
        True,
        "seconds a worker may take for one request (read by gunicorn.conf.py)",
        direct=False,
    ),
    Alias(
        "PORT",
        "BIND",
        True,
        "gunicorn binds 0.0.0.0:$PORT, gunicorn's own rule (read by gunicorn.conf.py); make run serves on it",
        direct=False,
    ),
    Alias("MAX_POOL_SIZE", "POOL_SIZE", True, "database connections each worker keeps open"),
    Alias("POOL_RECYCLE", "POOL_RECYCLE_SECONDS", True, "seconds before a pooled connection is replaced"),
    Alias("USE_JSON_LOGS", "LOG_FORMAT", True, "true: json, false: console", convert=_json_logs),
    Alias("LOG_DIR", "LOG_FILE", True, "log to $LOG_DIR/tokenpool.log", direct=False),
    Alias(
        "ENABLE_FILE_LOGGING",
        "LOG_FILE",
        True,
        "true: log to $LOG_DIR/tokenpool.log (LOG_DIR default: instance/logs); false: no log file",
        direct=False,
    ),
    Alias("RATE_LIMIT_MAX", "RATE_LIMIT_PER_MINUTE", True, "requests per client IP and window"),
    Alias(
        "RATE_LIMIT_TTL",
        "RATE_LIMIT_PER_MINUTE",
        True,
        "the window in seconds: only 60 (limits count per minute); another value stops the start",
        direct=False,
    ),
    Alias("TRACING_ENABLED", "OTEL_ENABLED", True, "OpenTelemetry tracing on or off"),
    Alias(
        "PHX_HOST",
        "PUBLIC_URL",
        True,
        "the public host name: PUBLIC_URL becomes https://$PHX_HOST",
        convert=_https_origin,
    ),
    Alias(
        "JAEGER_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        False,
        "it names Jaeger's own (Thrift) collector; give OTEL_EXPORTER_OTLP_ENDPOINT the collector's "
        "OTLP address instead (Jaeger takes OTLP on port 4318)",
    ),
)
_DIRECT_ALIASES: dict[str, tuple[Alias, ...]] = {}
for _alias in ALIASES:
    if _alias.accepted and _alias.direct:
        _DIRECT_ALIASES[_alias.canonical] = (*_DIRECT_ALIASES.get(_alias.canonical, ()), _alias)


def _log_file(instance_path: str) -> str | None:
    """LOG_FILE, else the file the aliases LOG_DIR / ENABLE_FILE_LOGGING ask for, else None."""
    explicit = _str("LOG_FILE", None)
    if explicit:
        return explicit
    enabled, folder = _bool("ENABLE_FILE_LOGGING", None), _str("LOG_DIR", None)
    if enabled is False or (enabled is None and folder is None):
        return None
    return str(Path(folder or Path(instance_path) / "logs") / "tokenpool.log")


def _rate_limit_per_minute() -> int:
    """RATE_LIMIT_PER_MINUTE (alias RATE_LIMIT_MAX); the alias RATE_LIMIT_TTL may only say 60 seconds."""
    window = _int("RATE_LIMIT_TTL", 60, minimum=1)
    if window != 60:
        raise ConfigError(
            f"RATE_LIMIT_TTL must be 60 (limits count per minute; set RATE_LIMIT_PER_MINUTE), got {window}"
        )
    return _int("RATE_LIMIT_PER_MINUTE", 100, minimum=1)


def _lifetime_seconds() -> int:
    if os.environ.get("TOKEN_LIFETIME_SECONDS", "").strip():
        return _int("TOKEN_LIFETIME_SECONDS", 120, minimum=1)
    if os.environ.get("TOKEN_LIFETIME_MINUTES", "").strip():
        return _int("TOKEN_LIFETIME_MINUTES", 2, minimum=1) * 60
    return 120


def _public_url(raw: str | None) -> str | None:
    """PUBLIC_URL as `scheme://host[:port]` (no path, query or user), or None when unset."""
    if raw is None:
        return None
    parts = urlsplit(raw)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or not port_ok
    ):
        raise ConfigError(f"PUBLIC_URL must look like https://tokens.example.com, got {raw!r}")
    return f"{parts.scheme}://{parts.netloc}"


def normalise_database_url(url: str) -> str:
    """Point plain PostgreSQL URLs at psycopg 3, the driver we ship."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_URL_USER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:")  # scheme://user: (a password follows)
# query parameters that carry a secret: libpq's password and sslpassword, redis-py's password, tokens
_SECRET_PARAM = re.compile(r"([?&][^=&#]*(?:pass|pwd|secret|token)[^=&#]*=)[^&#]*", re.IGNORECASE)


@overload
def mask_url(url: str) -> str: ...
@overload
def mask_url(url: None) -> None: ...


def mask_url(url: str | None) -> str | None:
    """`url` with every password in it shown as `***`; None stays None.

    Any scheme (postgresql+psycopg, redis, rediss, redis+sentinel with several hosts).
    The `user:password@` part is masked up to the last `@` of the URL: SQLAlchemy
    takes a password with an unescaped `/`, `?` or `#` as written, and a part left
    after an earlier `@` would print the rest of it. Query parameters that carry a
    secret (`password=`, `sslpassword=`, `...token=`) are masked too: libpq and
    redis-py read a password from the query string.
    """
    if not url:
        return url
    user = _URL_USER.match(url)
    at = url.rfind("@")
    if user and at > user.end():
        url = f"{user.group(0)}***{url[at:]}"
    return _SECRET_PARAM.sub(r"\1***", url)


DATABASE_BACKENDS = ("sqlite", "postgresql")
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel")


def _check_database_url(raw: str, name: str = "DATABASE_URL") -> None:
    """`name` parses, names SQLite or PostgreSQL, has a TCP port if any, and its driver is installed.

    Raises ConfigError naming the variable; the URL in the message has its password masked.
    """
    shown = mask_url(raw)
    try:
        url = make_url(raw)
        port = url.port  # SQLAlchemy turns the port to int while parsing: a bad one raised already
    except (ArgumentError, ValueError):
        raise ConfigError(f"{name} is not a database URL, got {shown!r}") from None
    if url.get_backend_name() not in DATABASE_BACKENDS:
        raise ConfigError(f"{name} must be a sqlite:/// or postgresql:// URL, got {shown!r}")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{name}'s port must be 1-65535, got {port}")
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        driver = url.drivername
        raise ConfigError(f"{name} names the driver {driver!r}, which is not installed") from None


def _check_redis_url(name: str, raw: str, *, also: tuple[str, ...] = ()) -> None:
    """`name` (REDIS_URL, RATELIMIT_STORAGE_URI) is a redis://, rediss:// or redis+sentinel:// URL
    (or of a scheme in `also`) whose ports are TCP ports. Raises ConfigError naming `name`, password masked.
    """
    shown = mask_url(raw)
    scheme = raw.partition("://")[0].lower() if "://" in raw else ""
    if scheme not in REDIS_SCHEMES + also:
        kinds = " or ".join(f"{s}://" for s in REDIS_SCHEMES + also)
        raise ConfigError(f"{name} must be a URL of {kinds}, got {shown!r}")
    if scheme == "redis+sentinel":  # host:port[,host:port...] after the last @
        hosts = re.split(r"[/?#]", raw.split("://", 1)[1].rpartition("@")[2], maxsplit=1)[0]
        for host in hosts.split(","):
            port = host.rpartition(":")[2]
            if not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ConfigError(f"{name}: each sentinel must be host:port (port 1-65535), got {shown!r}")
    elif scheme in REDIS_SCHEMES:
        try:
            redis_parse_url(raw)  # redis-py's own reading: the port a number in range, the db a number
        except ValueError:  # its message may quote part of the password: not repeated
            raise ConfigError(
                f"{name} is not a Redis URL (a port outside 1-65535, or a / # ? @ in the password"
                f" not %-encoded?), got {shown!r}"
            ) from None


def _from_environment(instance_path: str, env: str) -> dict:
    if env not in ENVIRONMENTS:
        raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    sqlite_default = "sqlite:///" + str(Path(instance_path) / "tokenpool.sqlite3")
    return {
        "APP_ENV": env,
        "TESTING": env == "testing",
        "SECRET_KEY": _str("SECRET_KEY", None),
        "APP_VERSION": _str("APP_VERSION", "0.1.0"),
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(_str("DATABASE_URL", sqlite_default)),
        "REDIS_URL": _str("REDIS_URL", None),
        "REDIS_TLS_CA_CERTS": _str("REDIS_TLS_CA_CERTS", None),
        "REDIS_TLS_CERTFILE": _str("REDIS_TLS_CERTFILE", None),
        "REDIS_TLS_KEYFILE": _str("REDIS_TLS_KEYFILE", None),
        "ADMIN_API_KEY": _str("ADMIN_API_KEY", None),
        "MAX_ACTIVE_TOKENS": _int("MAX_ACTIVE_TOKENS", 100, minimum=1),
        "TOKEN_LIFETIME_SECONDS": _lifetime_seconds(),
        "CHECK_INTERVAL_SECONDS": _int("CHECK_INTERVAL_SECONDS", 30, minimum=1),
        "SWEEPER_ENABLED": _bool("SWEEPER_ENABLED", env != "testing"),
        "POOL_SIZE": _int("POOL_SIZE", 5, minimum=1),
        "POOL_MAX_OVERFLOW": _int("POOL_MAX_OVERFLOW", 5, minimum=0),
        "POOL_RECYCLE_SECONDS": _int("POOL_RECYCLE_SECONDS", 1800, minimum=1),
        "DB_CONNECT_TIMEOUT": _int("DB_CONNECT_TIMEOUT", 3, minimum=1),
        "DB_STATEMENT_TIMEOUT_MS": _int("DB_STATEMENT_TIMEOUT_MS", 5000, minimum=0),
        "DB_DEADLINE_SECONDS": _float("DB_DEADLINE_SECONDS", 3.0),
        "DB_PGBOUNCER": _bool("DB_PGBOUNCER", False),
        "DATABASE_DIRECT_URL": _str("DATABASE_DIRECT_URL", None),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 64 * 1024, minimum=1),
        "LOG_LEVEL": (_str("LOG_LEVEL", "INFO") or "INFO").upper(),
        "LOG_FORMAT": _str("LOG_FORMAT", "json" if env == "production" else "console"),
        "LOG_FILE": _log_file(instance_path),
        "LOG_ERROR_FILE": _str("LOG_ERROR_FILE", None),
        "LOG_ASYNC": _bool("LOG_ASYNC", False),
        "LOG_FILE_MAX_BYTES": _int("LOG_FILE_MAX_BYTES", 50 * 1024 * 1024, minimum=1024),
        "LOG_FILE_BACKUPS": _int("LOG_FILE_BACKUPS", 10, minimum=0),
        "LOG_REPEAT_WINDOW_SECONDS": _float("LOG_REPEAT_WINDOW_SECONDS", 5.0),
        "LOG_EXCEPTIONS_FILE": _str("LOG_EXCEPTIONS_FILE", None),
        "LOG_ROTATE": _str("LOG_ROTATE", "size"),
        "LOG_RETENTION_DAYS": _int("LOG_RETENTION_DAYS", 0, minimum=0),
        "LOGSTASH_HOST": _str("LOGSTASH_HOST", None),
        "LOGSTASH_PORT": _int("LOGSTASH_PORT", 5000, minimum=1),
        "LOGSTASH_QUEUE_SIZE": _int("LOGSTASH_QUEUE_SIZE", 10000, minimum=1),
        "METRICS_ENABLED": _bool("METRICS_ENABLED", True),
        "METRICS_TOKEN": _str("METRICS_TOKEN", None),
        "SLOW_QUERY_MS": _int("SLOW_QUERY_MS", 1000, minimum=1),
        "SLOW_REQUEST_MS": _int("SLOW_REQUEST_MS", 2000, minimum=1),
        # on in production; off in development (a developer's loop of curls or scripts
        # must not meet 429) and testing; ENABLE_RATE_LIMITING=true turns them on anywhere
        "ENABLE_RATE_LIMITING": _bool("ENABLE_RATE_LIMITING", env == "production"),
        "RATE_LIMIT_PER_MINUTE": _rate_limit_per_minute(),
        "API_KEY_RATE_LIMIT_PER_MINUTE": _int("API_KEY_RATE_LIMIT_PER_MINUTE", 600, minimum=1),
        "API_KEY_RATE_LIMIT_PER_HOUR": _int("API_KEY_RATE_LIMIT_PER_HOUR", 20000, minimum=1),
        "RATE_LIMIT_LEASE": _int("RATE_LIMIT_LEASE", 32, minimum=1),
        "AUTH_FAILURE_RATE_LIMIT": _str("AUTH_FAILURE_RATE_LIMIT", "10/minute"),
        "RATELIMIT_STORAGE_URI": _str("RATELIMIT_STORAGE_URI", None),
        "API_AUTH_REQUIRED": _bool("API_AUTH_REQUIRED", False),
        "API_KEY_CACHE_SECONDS": _float("API_KEY_CACHE_SECONDS", 10.0),
        "FORCE_HTTPS": _bool("FORCE_HTTPS", False),
        "PUBLIC_URL": _str("PUBLIC_URL", None),
        "HSTS_MAX_AGE": _int("HSTS_MAX_AGE", 31536000),
        "ALLOWED_ORIGINS": _str("ALLOWED_ORIGINS", ""),
        "ALLOW_ANY_ORIGIN": _bool("ALLOW_ANY_ORIGIN", False),
        "OTEL_ENABLED": _bool("OTEL_ENABLED", False),
        "OTEL_SERVICE_NAME": _str("OTEL_SERVICE_NAME", "tokenpool"),
        "MONITORING_FLUSH_SECONDS": _float("MONITORING_FLUSH_SECONDS", 1.0),
        "ENABLE_TEST_HOOKS": _bool("ENABLE_TEST_HOOKS", False),
        "HEALTH_CACHE_SECONDS": _float("HEALTH_CACHE_SECONDS", 2.0),
        "HEALTH_CHECK_TIMEOUT": _float("HEALTH_CHECK_TIMEOUT", 3.0, positive=True),
        "SWEEPER_STALE_INTERVALS": _int("SWEEPER_STALE_INTERVALS", 4, minimum=2),
        "MEMORY_LIMIT_MB": _int("MEMORY_LIMIT_MB", 512, minimum=16),
        "EVENT_STREAM_SECONDS": _float("EVENT_STREAM_SECONDS", None),  # None: by server (events/stream.py)
        "EVENT_STREAM_HEARTBEAT_SECONDS": _float("EVENT_STREAM_HEARTBEAT_SECONDS", 15.0, positive=True),
        "EVENT_STREAM_RETRY_MS": _int("EVENT_STREAM_RETRY_MS", 750, minimum=100),
        "EVENT_STREAM_POLL_SECONDS": _float("EVENT_STREAM_POLL_SECONDS", 0.25),
        "EVENT_STREAMS_PER_WORKER": _int("EVENT_STREAMS_PER_WORKER", 100, minimum=1),
        "EVENT_RETENTION_HOURS": _int("EVENT_RETENTION_HOURS", 72, minimum=1),
        "USAGE_RETENTION_DAYS": _int("USAGE_RETENTION_DAYS", 90, minimum=0),
        "WEB_CONCURRENCY": _int("WEB_CONCURRENCY", 0),  # gunicorn's workers; 0: gunicorn.conf.py's default
        "PROXY_FIX_X_FOR": _int("PROXY_FIX_X_FOR", 0),
        "PROXY_FIX_X_PROTO": _int("PROXY_FIX_X_PROTO", 0),
    }


def setting_names(instance_path: str, env: str) -> list[str]:
    """The `app.config` keys read from the environment, in reading order (for `flask config check`)."""
    return list(_from_environment(instance_path, env))


def _validate(config: dict) -> None:
    if config["LOG_LEVEL"] not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL must be a logging level name, got {config['LOG_LEVEL']!r}")
    if config["LOG_FORMAT"] not in ("json", "console"):
        raise ConfigError(f"LOG_FORMAT must be 'json' or 'console', got {config['LOG_FORMAT']!r}")
    if config["LOG_ROTATE"] not in ROTATIONS:
        raise ConfigError(f"LOG_ROTATE must be one of {', '.join(ROTATIONS)}, got {config['LOG_ROTATE']!r}")
    if config["LOGSTASH_PORT"] > 65535:
        raise ConfigError(f"LOGSTASH_PORT must be a TCP port (1-65535), got {config['LOGSTASH_PORT']}")
    _check_database_url(config["SQLALCHEMY_DATABASE_URI"])
    if config.get("DATABASE_DIRECT_URL"):
        config["DATABASE_DIRECT_URL"] = normalise_database_url(config["DATABASE_DIRECT_URL"])
        _check_database_url(config["DATABASE_DIRECT_URL"], "DATABASE_DIRECT_URL")
    if config.get("REDIS_URL"):
        _check_redis_url("REDIS_URL", config["REDIS_URL"])
    if config.get("RATELIMIT_STORAGE_URI"):
        _check_redis_url("RATELIMIT_STORAGE_URI", config["RATELIMIT_STORAGE_URI"], also=("memory",))
    problem = check_folders(config)
    if problem:
        raise ConfigError(problem)
    try:
        parse_limit(config["AUTH_FAILURE_RATE_LIMIT"])
    except ValueError:
        value = config["AUTH_FAILURE_RATE_LIMIT"]
        raise ConfigError(f"AUTH_FAILURE_RATE_LIMIT must look like '10/minute', got {value!r}") from None
    config["PUBLIC_URL"] = _public_url(config.get("PUBLIC_URL") or None)
    if config["FORCE_HTTPS"] and (config.get("PUBLIC_URL") or "https:").startswith("http:"):
        raise ConfigError("PUBLIC_URL must be an https:// URL when FORCE_HTTPS is on")
    deadline = config["DB_DEADLINE_SECONDS"]
    if not 0.1 <= deadline <= 600:
        raise ConfigError(f"DB_DEADLINE_SECONDS must be between 0.1 and 600 (seconds), got {deadline}")
    if config["APP_ENV"] == "production":
        if not config.get("SECRET_KEY"):
            raise ConfigError("SECRET_KEY must be set in production")
        if config["ENABLE_TEST_HOOKS"]:
            raise ConfigError("ENABLE_TEST_HOOKS must not be set in production")
    elif not config.get("SECRET_KEY"):
        config["SECRET_KEY"] = "dev-only-not-secret"


def load_config(app, overrides: dict | None = None) -> None:
    """Fill `app.config` from the environment, `instance/config.py` and overrides.

    Raises ConfigError naming the first bad variable.
    """
    env: str = (overrides or {}).get("APP_ENV") or _str("APP_ENV", "development")
    app.config.update(_from_environment(app.instance_path, env))
    app.config.from_pyfile("config.py", silent=True)
    if overrides:
        app.config.update(overrides)
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(app.config["SQLALCHEMY_DATABASE_URI"])
    _validate(app.config)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(app.config)


def engine_options(config: dict) -> dict:
    """Pool and timeout settings for the configured database."""
    url = config["SQLALCHEMY_DATABASE_URI"]
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    connect_args = {"connect_timeout": config["DB_CONNECT_TIMEOUT"]}
    if config["DB_PGBOUNCER"]:
        # transaction pooling: no session state at all. No startup options (PgBouncer refuses
        # them), no server-side prepared statements (they live on one server connection);
        # the timeouts are set per transaction instead (Deadline.fit_server_timeouts)
        connect_args["prepare_threshold"] = None
    else:
        # a new connection's statement and lock timeouts fit a whole request budget (see deadline.py)
        deadline = Deadline(config["DB_DEADLINE_SECONDS"], config["DB_STATEMENT_TIMEOUT_MS"])
        timeout_ms = deadline.session_timeout_ms()
        connect_args["options"] = f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
    return {
        "poolclass": BoundedQueuePool,  # a checkout waits no longer than the budget
        "pool_size": config["POOL_SIZE"],
        "max_overflow": config["POOL_MAX_OVERFLOW"],
        # no pre-ping round trip per checkout: run_transaction retries once on a dropped connection
        "pool_pre_ping": False,
        "pool_recycle": config["POOL_RECYCLE_SECONDS"],
        "pool_timeout": config["DB_CONNECT_TIMEOUT"],
        "connect_args": connect_args,
    }
