"""Redis clients from `REDIS_URL`: plain, TLS (`rediss://`) or through Sentinel (`redis+sentinel://`).

Every Redis use (rate-limit storage, monitoring figures, the health check)
builds its client here, so the three URL forms and the TLS settings mean the
same everywhere:

- `redis://[[user]:password@]host:port[/db]`
- `rediss://[[user]:password@]host:port[/db]` - TLS; the server's certificate is
  checked against `REDIS_TLS_CA_CERTS` (a PEM file; the system's CAs if unset),
  and `REDIS_TLS_CERTFILE` / `REDIS_TLS_KEYFILE` give a client certificate when
  the server asks for one. redis-py's `ssl_*` query parameters work too.
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name` -
  the sentinels to ask; the client talks to the current master of
  `service_name` and follows a failover. The password (if any) is sent to the
  sentinels and to the master, as the `limits` library does for its storage.
  Database 0; Sentinel connections are plain TCP.

Every connection has connect and read timeouts (`timeout`, seconds) and no
retry with back-off (redis-py's default for a client built without a pool is
three retries up to 10 s apart, which Sentinel's own clients would inherit):
a stalled Redis costs a request at most about `timeout` per round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .config import ConfigError

SENTINEL_SCHEME = "redis+sentinel://"
TLS_SETTINGS = {
    "REDIS_TLS_CA_CERTS": "ssl_ca_certs",
    "REDIS_TLS_CERTFILE": "ssl_certfile",
    "REDIS_TLS_KEYFILE": "ssl_keyfile",
}


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name`.

    Raises ConfigError (naming the fault, never the password) for a URL
    without sentinels, with a host without a numeric port, or without a
    service name.
    """
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    auth, _, hosts = netloc.rpartition("@")
    username = password = None
    if auth:
        user, sep, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"REDIS_URL: sentinel {host!r} must be host:port")
        sentinels.append((name.strip("[]"), int(port)))
    service_name = path.split("?", 1)[0].strip("/")
    if not sentinels:
        raise ConfigError("REDIS_URL: redis+sentinel:// needs at least one host:port")
    if not service_name or "/" in service_name:
        raise ConfigError("REDIS_URL: redis+sentinel:// needs the service name as its path (/mymaster)")
    return SentinelURL(tuple(sentinels), service_name, username, password)


def no_retry() -> Retry:
    """redis-py's retry policy of no retry at all: a failure is reported at once."""
    return Retry(NoBackoff(), 0)


def connection_options(url: str, config, timeout: float) -> dict:
    """redis-py connection keyword arguments for `url`: timeouts, no retry, TLS files for rediss://."""
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry": no_retry()}
    if url.startswith("rediss://"):
        options.update({kw: config[name] for name, kw in TLS_SETTINGS.items() if config.get(name)})
    return options


def sentinel_options(timeout: float) -> dict:
    """Keyword arguments for the clients that ask the sentinels (redis-py's `sentinel_kwargs`)."""
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry": no_retry()}


def redis_client(url: str, config, *, timeout: float = 0.3) -> redis_lib.Redis:
    """A redis-py client for `url` (any of the three forms); connects lazily, on first command.

    `config` is the app's config (a mapping) for the TLS settings. Raises
    ConfigError for a malformed `redis+sentinel://` URL.
    """
    options = connection_options(url, config, timeout)
    if not url.startswith(SENTINEL_SCHEME):
        return redis_lib.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    auth = {k: v for k, v in (("username", parsed.username), ("password", parsed.password)) if v}
    sentinel = Sentinel(
        list(parsed.sentinels), sentinel_kwargs={**sentinel_options(timeout), **auth}, **options, **auth
    )
    return sentinel.master_for(parsed.service_name)


def limits_storage_options(url: str, config, *, timeout: float = 0.3) -> dict:
    """Storage options for the `limits` library (Flask-Limiter's RATELIMIT_STORAGE_OPTIONS) for `url`.

    The same connection options as `redis_client`; with Sentinel also the
    sentinels' own options and `use_replicas=False` (every read of a limit goes
    to the master, so a lagging replica never shows an old count).
    """
    if not url.startswith(SENTINEL_SCHEME):
        return connection_options(url, config, timeout)
    parse_sentinel_url(url)  # a clear ConfigError before limits' own parser sees it
    return {
        **connection_options(url, config, timeout),
        "sentinel_kwargs": sentinel_options(timeout),
        "use_replicas": False,
    }
