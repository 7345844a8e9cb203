"""Rate limits (Flask-Limiter): per client IP, per API key (minute and hour), failed auth.

Storage is Redis when `REDIS_URL` (or `RATELIMIT_STORAGE_URI`) is set, so a
limit holds across every worker and instance; `memory://` otherwise. The
strategy is fixed-window (`LeasedFixedWindow`): at most one Redis round trip
per limit and request, headers included, and none for most requests far from
the limit (leased permits); never more than the limit across processes. Its
cost is the known burst at a window edge (up to 2x the limit over two adjacent
windows), which we accept for a token API.
If Redis fails, requests are served on per-process in-memory counters (one
warning per outage, a metric) until Redis answers again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

from flask import current_app, g, has_request_context, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from limits import WindowStats, parse
from limits.storage import RedisStorage
from limits.strategies import STRATEGIES, FixedWindowRateLimiter

from .errors import RateLimited

log = logging.getLogger("tokenpool.ratelimit")
EXEMPT_BLUEPRINTS = ("health", "metrics", "openapi")
KEYED_BLUEPRINTS = ("tokens", "monitoring")
WINDOWS = {60: "Minute", 3600: "Hour"}


def _key_identity() -> str:
    """The per-key bucket: the key's name (never the secret)."""
    return "key:" + g.api_key.name


def _no_key() -> bool:
    return g.get("api_key") is None


def _has_key() -> bool:
    return g.get("api_key") is not None


class _FallbackCounter(logging.Handler):
    """Counts Flask-Limiter's one warning per Redis outage into our metric."""

    def __init__(self, metrics) -> None:
        super().__init__(logging.WARNING)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        if "falling back to in-memory" in record.getMessage():
            self.metrics.rate_limit_fallbacks.inc()


class LeasedFixedWindow(FixedWindowRateLimiter):
    """fixed-window on Redis in at most one round trip per request, and usually none.

    A hit runs one Lua script that increments the window and returns its count
    and TTL, so the X-RateLimit-* headers cost no extra GET and TTL (their
    stats for a window hit during this request are answered from `g`).
    Far from the limit, the script grants a *lease*: up to `most` permits at
    once, never more than 1/LEASE_SHARE of the room left in the window. This
    process then admits that many requests of the window without asking Redis.
    Permits are counted in Redis when leased, so the limit is never exceeded;
    near the limit (room below 2 x LEASE_SHARE) every request is counted one by
    one, so the last permits of a window are exact. A lease is kept until its
    window ends; the cost is that up to one lease per process (at most `most`
    permits, never more than 1/LEASE_SHARE of the window) can sit unused in a
    process the client stops reaching. `most = 1` counts every request in Redis.
    Other storages (memory://, the in-memory fallback) use the plain strategy.
    """

    LEASE_SHARE = 256
    SCRIPT = """
    local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
    local grant = cost
    local count = tonumber(redis.call('get', KEYS[1]) or '0')
    if count + cost <= limit then
        local share = math.floor((limit - count) / tonumber(ARGV[5]))
        grant = math.max(cost, math.min(tonumber(ARGV[4]) * cost, share))
    end
    count = redis.call('incrby', KEYS[1], grant)
    if count == grant then redis.call('expire', KEYS[1], ARGV[1]) end
    return {count, redis.call('ttl', KEYS[1]), grant}
    """

    def __init__(self, storage) -> None:
        super().__init__(storage)
        self.most = 1
        self._script = None
        self._leases: dict[str, list] = {}  # window key -> [permits left, count once spent, window end]
        self._lock = threading.Lock()
        if isinstance(storage, RedisStorage):
            self._script = storage.get_connection().register_script(self.SCRIPT)

    def hit(self, item, *identifiers: str, cost: int = 1) -> bool:
        if self._script is None:
            return super().hit(item, *identifiers, cost=cost)
        key = item.key_for(*identifiers)
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease[0] >= cost and lease[2] > now:
                lease[0] -= cost
                self._seen(key, lease[1] - lease[0], lease[2])
                return True
        args = [item.get_expiry(), cost, item.amount, self.most, self.LEASE_SHARE]
        count, ttl, grant = self._script([self.storage.prefixed_key(key)], args)
        count, reset_at = int(count), now + max(int(ttl), 0)
        with self._lock:
            if int(grant) > cost:
                if len(self._leases) > 10_000:
                    self._leases = {k: v for k, v in self._leases.items() if v[2] > now}
                self._leases[key] = [int(grant) - cost, count, reset_at]
            else:
                self._leases.pop(key, None)
        self._seen(key, count - int(grant) + cost, reset_at)
        return count <= item.amount

    @staticmethod
    def _seen(key: str, count: int, reset_at: float) -> None:
        if has_request_context():
            g.setdefault("rate_windows", {})[key] = (count, reset_at)

    def get_window_stats(self, item, *identifiers: str) -> WindowStats:
        seen = g.get("rate_windows", {}).get(item.key_for(*identifiers)) if has_request_context() else None
        if seen is None:
            return super().get_window_stats(item, *identifiers)
        count, reset_at = seen
        return WindowStats(reset_at, max(0, item.amount - count))


STRATEGIES.setdefault("tokenpool-fixed-window", LeasedFixedWindow)


def _storage_uri(config) -> str:
    return config.get("RATELIMIT_STORAGE_URI") or config.get("REDIS_URL") or "memory://"


def init_rate_limits(app, blueprints: dict) -> Limiter | None:
    """Build the app's limiter from settings and put the limits on the blueprints."""
    config = app.config
    metrics = app.extensions["tokenpool.metrics"]
    storage = _storage_uri(config)
    config["RATELIMIT_ENABLED"] = config["ENABLE_RATE_LIMITING"]
    config["RATELIMIT_STORAGE_URI"] = storage
    config.setdefault("RATELIMIT_STRATEGY", "tokenpool-fixed-window")
    config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    config.setdefault("RATELIMIT_KEY_PREFIX", "tokenpool")
    if storage.startswith("redis"):
        config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 0.3, "socket_timeout": 0.3})
    elif config["RATELIMIT_ENABLED"] and int(os.environ.get("WEB_CONCURRENCY", "1")) > 1:
        log.warning("rate limits use memory:// with several workers: each worker counts alone; set REDIS_URL")

    def on_breach(limit: RequestLimit) -> None:
        scope = _scope(limit)
        name = scope if scope.startswith("api_key") else "ip"
        metrics.rate_limit_hits.labels(name).inc()
        log.warning(
            "rate limit exceeded",
            extra={"event": "rate_limited", "limit": str(limit.limit), "key_kind": name},
        )

    limiter = Limiter(
        get_remote_address,
        application_limits=[f"{config['RATE_LIMIT_PER_MINUTE']}/minute"],  # parsed once, not per request
        application_limits_exempt_when=_has_key,
        on_breach=on_breach,
    )
    # after_request hooks run last-registered first: this one runs after Flask-Limiter's own
    app.after_request(_retry_after_as_answered)
    limiter.init_app(app)
    if limiter.enabled and isinstance(limiter.limiter, LeasedFixedWindow):
        limiter.limiter.most = config["RATE_LIMIT_LEASE"]
    app.extensions["tokenpool.limiter"] = limiter  # extensions["limiter"] is Flask-Limiter's set of limiters
    fallback = _FallbackCounter(metrics)
    limiter.logger.addHandler(fallback)
    for name in EXEMPT_BLUEPRINTS:
        if name in blueprints:
            limiter.exempt(blueprints[name])
    for name in KEYED_BLUEPRINTS:
        if name in blueprints:
            _limit_keys(limiter, blueprints[name])
    _limit_auth_failures(app, limiter, metrics)
    app.after_request(_per_window_headers)
    return limiter


def _scope(limit: RequestLimit) -> str:
    """The limit's scope: the last request arg (after the key prefix and the key)."""
    return limit.request_args[-1] if limit.request_args else ""


def _limit_keys(limiter: Limiter, bp) -> None:
    """Per API key: its own per-minute, then per-hour limit (minute first: see README)."""

    def per_minute() -> str:
        own = g.api_key.per_minute if _has_key() else None
        return f"{own or current_app.config['API_KEY_RATE_LIMIT_PER_MINUTE']}/minute"

    def per_hour() -> str:
        own = g.api_key.per_hour if _has_key() else None
        return f"{own or current_app.config['API_KEY_RATE_LIMIT_PER_HOUR']}/hour"

    # shared: one bucket per key over every route (a plain limit would count each route apart)
    limiter.shared_limit(per_minute, "api_key_minute", key_func=_key_identity, exempt_when=_no_key)(bp)
    limiter.shared_limit(per_hour, "api_key_hour", key_func=_key_identity, exempt_when=_no_key)(bp)


def _limit_auth_failures(app, limiter: Limiter, metrics) -> None:
    """A stricter per-IP budget for rejected keys; once spent, key attempts get 429."""
    item = parse(app.config["AUTH_FAILURE_RATE_LIMIT"])

    def charge() -> None:
        if not current_app.config["RATELIMIT_ENABLED"]:
            return
        try:
            allowed = limiter.limiter.hit(item, "auth-failures", get_remote_address())
        except Exception:  # storage down: the request is refused anyway (401)
            return
        if not allowed:
            metrics.rate_limit_hits.labels("auth_failures").inc()
            reset_at, _ = limiter.limiter.get_window_stats(item, "auth-failures", get_remote_address())
            raise RateLimited(math.ceil(reset_at - time.time()), "Too many failed authentication attempts.")

    app.extensions["tokenpool.auth_failure_charge"] = charge


def _retry_after_as_answered(response):
    """Keep `Retry-After` equal to the 429 body's `retry_after` (rounded up to whole seconds).

    Flask-Limiter rewrites the header as int(reset - now), up to a second short of the real wait.
    """
    if response.status_code == 429 and response.is_json:
        retry_after = (response.get_json(silent=True) or {}).get("retry_after")
        if isinstance(retry_after, int):
            response.headers["Retry-After"] = str(retry_after)
    return response


def _per_window_headers(response):
    """For API-key callers: X-RateLimit-{Limit,Remaining,Reset}-{Minute,Hour}."""
    if g.get("api_key") is None or request.blueprint not in KEYED_BLUEPRINTS:
        return response
    limiter = current_app.extensions.get("tokenpool.limiter")
    if limiter is None or not current_app.config["RATELIMIT_ENABLED"]:
        return response
    try:
        for current in limiter.current_limits:
            window = WINDOWS.get(current.limit.get_expiry())
            if window and _scope(current).startswith("api_key"):
                response.headers[f"X-RateLimit-Limit-{window}"] = str(current.limit.amount)
                response.headers[f"X-RateLimit-Remaining-{window}"] = str(current.remaining)
                response.headers[f"X-RateLimit-Reset-{window}"] = str(current.reset_at)
    except Exception:  # storage trouble must not fail the answer
        log.debug("per-window rate limit headers unavailable", exc_info=True)
    return response
