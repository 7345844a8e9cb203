"""Rate limits (Flask-Limiter): per client IP, per API key (minute and hour), failed auth.

Storage is Redis when `REDIS_URL` (or `RATELIMIT_STORAGE_URI`) is set, so a
limit holds across every worker and instance; `memory://` otherwise. The
strategy is fixed-window (`LeasedFixedWindow`): at most one Redis round trip
per limit and request, headers included, and none for most requests far from
the limit (leased permits); never more than the limit across processes. Its
cost is the known burst at a window edge (up to 2x the limit over two adjacent
windows), which we accept for a token API.
The policy is small and fixed, so `PolicyLimiter` applies it directly instead
of resolving Flask-Limiter's limit registry on every request (that resolution
cost about 0.3 ms of CPU per request, more than the rest of the stack).
If Redis fails, requests are served on per-process in-memory counters (one
warning per outage, a metric) until Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from types import MappingProxyType
from typing import cast

from flask import current_app, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItemPerHour, RateLimitItemPerMinute, parse
from limits.storage import RedisStorage, Storage
from limits.strategies import STRATEGIES, FixedWindowRateLimiter

from .authentication import caller
from .errors import RateLimited
from .ratelimit_headers import rate_limit_headers, seconds_until
from .redis_connect import limits_storage_options
from .response_headers import add_checked, is_cors_preflight
from .state import app_state

log = logging.getLogger("tokenpool.ratelimit")
FALLBACK = "Rate limit storage unreachable - falling back to in-memory storage"


class LeasedFixedWindow(FixedWindowRateLimiter):
    """fixed-window on Redis in at most one round trip per request, and usually none.

    A hit runs one Lua script that increments the window and returns its count
    and PTTL, so the rate-limit headers cost no extra GET and TTL
    (`hit_window` returns them with the answer). The window's end is taken in
    milliseconds and counted from the moment the answer arrives, so it is never
    earlier than the moment Redis expires the window (TTL's whole seconds
    rounded down, up to a second early).
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
    return {count, redis.call('pttl', KEYS[1]), grant}
    """

    def __init__(self, storage) -> None:
        super().__init__(storage)
        self.most = 1
        self._script = None
        self._leases: dict[str, list] = {}  # window key -> [permits left, count once spent, window end]
        self._lock = threading.Lock()
        if isinstance(storage, RedisStorage):
            self._script = storage.get_connection().register_script(self.SCRIPT)  # type: ignore[arg-type]

    def hit(self, item, *identifiers: str, cost: int = 1) -> bool:
        """Whether the hit is allowed (see `hit_window`)."""
        return self.hit_window(item, *identifiers, cost=cost)[0]

    def hit_window(self, item, *identifiers: str, cost: int = 1) -> tuple[bool, int, float]:
        """Hit the limit; (allowed, remaining, reset_at) of its window, learnt in the same round trip."""
        if self._script is None:
            allowed = super().hit(item, *identifiers, cost=cost)
            reset_at, remaining = super().get_window_stats(item, *identifiers)
            return allowed, remaining, reset_at
        key = item.key_for(*identifiers)
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease[0] >= cost and lease[2] > now:
                lease[0] -= cost
                return True, max(0, item.amount - lease[1] + lease[0]), lease[2]
        args = [item.get_expiry(), cost, item.amount, self.most, self.LEASE_SHARE]
        redis = cast(RedisStorage, self.storage)  # _script is set for Redis storage only
        count, pttl, grant = self._script([redis.prefixed_key(key)], args)
        now = time.time()  # after the round trip: Redis counted the PTTL from an earlier moment
        count, grant, reset_at = int(count), int(grant), now + max(int(pttl), 0) / 1000
        with self._lock:
            if grant > cost:
                if len(self._leases) > 10_000:
                    self._leases = {k: v for k, v in self._leases.items() if v[2] > now}
                self._leases[key] = [grant - cost, count, reset_at]
            else:
                self._leases.pop(key, None)
        spent = count - grant + cost  # the permits leased along are not spent yet
        return count <= item.amount, max(0, item.amount - spent), reset_at

    def peek_window(self, item, *identifiers: str) -> tuple[int, float]:
        """(remaining, reset_at) of the window without hitting it: one round trip (GET and PTTL)."""
        if self._script is None:
            reset_at, remaining = super().get_window_stats(item, *identifiers)
            return remaining, reset_at
        redis = cast(RedisStorage, self.storage)  # _script is set for Redis storage only
        pipe = redis.get_connection().pipeline(transaction=False)  # type: ignore[attr-defined]  # redis-py
        key = redis.prefixed_key(item.key_for(*identifiers))
        count, pttl = pipe.get(key).pttl(key).execute()
        return max(0, item.amount - int(count or 0)), time.time() + max(int(pttl), 0) / 1000


STRATEGIES.setdefault("tokenpool-fixed-window", LeasedFixedWindow)


class _NoLimitContext:
    """Flask-Limiter's per-request context as our policy leaves it: empty, and read-only.

    Only Flask-Limiter's own request check (which `PolicyLimiter` replaces)
    writes a context; its after-request and teardown hooks, which still run,
    only read it and reset it. One shared, empty context answers them without
    building one per request; a write raises instead of leaking between requests.
    """

    __slots__ = ()
    view_rate_limit = None
    view_rate_limits: tuple = ()
    conditional_deductions: MappingProxyType = MappingProxyType({})
    seen_limits: frozenset = frozenset()

    def reset(self) -> None:
        """Nothing to forget."""


NO_LIMIT_CONTEXT = _NoLimitContext()


def hit_window(strategy, item, *identifiers: str) -> tuple[bool, int, float]:
    """(allowed, remaining, reset_at) from any strategy: one round trip with ours, two otherwise."""
    if isinstance(strategy, LeasedFixedWindow):
        return strategy.hit_window(item, *identifiers)
    allowed = strategy.hit(item, *identifiers)
    reset_at, remaining = strategy.get_window_stats(item, *identifiers)
    return allowed, remaining, reset_at


def peek_window(strategy, item, *identifiers: str) -> tuple[int, float]:
    """(remaining, reset_at) from any strategy, counting nothing."""
    if isinstance(strategy, LeasedFixedWindow):
        return strategy.peek_window(item, *identifiers)
    reset_at, remaining = strategy.get_window_stats(item, *identifiers)
    return remaining, reset_at


class PolicyLimiter(Limiter):
    """Flask-Limiter (storage, strategy, in-memory fallback) applying our one policy per request.

    - callers without an API key: `RATE_LIMIT_PER_MINUTE` per client IP, one
      bucket across every limited route;
    - callers with a key, on the `keyed` routes (tokens, monitoring): the key's own
      per-minute, then per-hour limit (its overrides or the defaults), one
      bucket per key across those routes; minute first, and a request refused
      by the minute limit is not counted against the hour;
    - requests matching no route (404) or no method of it (405): per client
      IP, like any other request without a key;
    - routes whose class is not `limited` (probes, /metrics, the OpenAPI document,
      the console's page and files: fixed content, no key, no database; its API
      calls are limited like any; service/route_table.py) and CORS preflights:
      never limited.

    It overrides one private method, `_check_request_limit` (the request check
    Flask-Limiter's `init_app` registers), and drives the in-memory fallback
    through `_storage_dead`, the flag Flask-Limiter's public `limiter` property
    reads, with its own recovery (`_recover_storage`). Against Flask-Limiter's
    own check and limit registry this saves 80-89 us of CPU per request
    (docs/PERFORMANCE.md, "Library privates"; bench/library_overrides.py);
    tests/protection/test_library_tripwires.py fails when those names change.
    It also answers `context` (documented as private) with one shared empty
    context, as nothing but the replaced check writes one: Flask-Limiter's
    after-request and teardown hooks then cost ~2 us instead of ~11 us.
    """

    @property
    def context(self):
        """Flask-Limiter's per-request context: always empty under our policy (`_NoLimitContext`)."""
        return NO_LIMIT_CONTEXT

    def __init__(self, config) -> None:
        super().__init__(get_remote_address)
        self.ip_limit = RateLimitItemPerMinute(config["RATE_LIMIT_PER_MINUTE"])
        self.key_minute = config["API_KEY_RATE_LIMIT_PER_MINUTE"]
        self.key_hour = config["API_KEY_RATE_LIMIT_PER_HOUR"]
        self._items: dict[tuple[type, int], object] = {}
        self._recheck_at = 0.0
        self._recheck_delay = 1.0
        self.auth_failures = AuthFailureBudget(config, self)

    def _item(self, kind, amount: int):
        item = self._items.get((kind, amount))
        if item is None:
            item = self._items[(kind, amount)] = kind(amount)
        return item

    def limits_for_request(self) -> list[tuple]:
        """[(item, storage identifiers, kind)] that apply to this request, in order."""
        route_class = g._get_current_object().route_class  # service/route_table.py, set as the request began
        if not route_class.limited or is_cors_preflight():
            return []
        key = caller()  # authenticates if no hook asked yet; None without a route (404, 405): per IP
        if key is None:
            return [(self.ip_limit, (self._key_prefix, get_remote_address(), "global"), "ip")]
        if not route_class.keyed:
            return []
        bucket = "key:" + key.name  # the key's name, never the secret
        minute = self._item(RateLimitItemPerMinute, key.per_minute or self.key_minute)
        hour = self._item(RateLimitItemPerHour, key.per_hour or self.key_hour)
        return [
            (minute, (self._key_prefix, bucket, "api_key_minute"), "api_key_minute"),
            (hour, (self._key_prefix, bucket, "api_key_hour"), "api_key_hour"),
        ]

    def _check_request_limit(self, callable_name=None, in_middleware=True) -> None:
        """Flask-Limiter's before-request hook: hit each limit of the policy, raise on the first breach."""
        if not self.enabled:
            return
        checks = self.limits_for_request()
        if not checks:
            return
        self._recover_storage()
        try:
            self._hit(checks)
        except RateLimited:
            raise
        except Exception:
            if not self._in_memory_fallback_enabled or self._storage_dead:
                log.exception("rate limit check failed; request served unlimited")
                return
            self.logger.warning(FALLBACK)
            app_state().metrics.rate_limit_fallbacks.inc()
            self._storage_dead = True
            self._recheck_at, self._recheck_delay = time.time() + 1.0, 1.0
            self._hit(checks)

    def _hit(self, checks: list[tuple]) -> None:
        strategy = self.limiter  # the in-memory fallback while the storage is dead
        g._get_current_object().rate_limits = seen = []
        for item, identifiers, kind in checks:
            allowed, remaining, reset_at = hit_window(strategy, item, *identifiers)
            seen.append((item, kind, remaining, reset_at))
            if not allowed:
                app_state().metrics.rate_limit_hits.labels(kind).inc()
                extra = {"event": "rate_limited", "limit": str(item), "key_kind": kind}
                log.warning("rate limit exceeded", extra=extra)
                raise RateLimited(seconds_until(reset_at, time.time()))

    def _recover_storage(self) -> None:
        """While on the fallback, ask the real storage again (1 s, 2 s, 4 s ... up to 30 s apart)."""
        if not self._storage_dead or time.time() < self._recheck_at:
            return
        try:
            alive = cast(Storage, self._storage).check()
        except Exception:
            alive = False
        if alive:
            self.logger.info("Rate limit storage recovered")
            self._storage_dead = False
        else:
            self._recheck_delay = min(self._recheck_delay * 2, 30.0)
            self._recheck_at = time.time() + self._recheck_delay

    def headers(self, response):
        """The rate-limit headers of the limits this request hit (ratelimit_headers.py)."""
        seen = g._get_current_object().get("rate_limits")
        if seen:
            hits = [(kind, item.amount, item.get_expiry(), left, reset) for item, kind, left, reset in seen]
            # only this hook writes them: added, not searched for and replaced; values made of numbers
            add_checked(response.headers, rate_limit_headers(hits, time.time()))
        return response


def _storage_uri(config) -> str:
    return config.get("RATELIMIT_STORAGE_URI") or config.get("REDIS_URL") or "memory://"


def build_rate_limiter(app) -> PolicyLimiter:
    """The app's limiter and its failed-auth budget (`auth_failures`), from settings, not yet bound.

    Bound by `init_rate_limits`; the budget is counted on the limiter's storage.
    """
    config = app.config
    storage = _storage_uri(config)
    config["RATELIMIT_ENABLED"] = config["ENABLE_RATE_LIMITING"]
    config["RATELIMIT_STORAGE_URI"] = storage
    config.setdefault("RATELIMIT_STRATEGY", "tokenpool-fixed-window")
    config.setdefault("RATELIMIT_HEADERS_ENABLED", False)  # ours: PolicyLimiter.headers
    config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    config.setdefault("RATELIMIT_KEY_PREFIX", "tokenpool")
    if storage.startswith(("redis://", "rediss://", "redis+sentinel://")):
        config.setdefault("RATELIMIT_STORAGE_OPTIONS", limits_storage_options(storage, config))
    elif config["RATELIMIT_ENABLED"] and config.get("WEB_CONCURRENCY", 0) > 1:
        log.warning("rate limits use memory:// with several workers: each worker counts alone; set REDIS_URL")

    return PolicyLimiter(config)


def init_rate_limits(app, limiter: PolicyLimiter) -> None:
    """Bind `limiter` (`build_rate_limiter`) to the app: its before-request hook applies the policy."""
    limiter.init_app(app)
    app_state(app).limiter = limiter  # extensions["limiter"] is Flask-Limiter's set of limiters
    if limiter.enabled:
        if isinstance(limiter.limiter, LeasedFixedWindow):
            limiter.limiter.most = app.config["RATE_LIMIT_LEASE"]
        app.after_request(limiter.headers)


class AuthFailureBudget:
    """A stricter per-IP budget (`AUTH_FAILURE_RATE_LIMIT`) for rejected keys.

    Each rejected key spends one (`charge`); once the budget of an IP is spent,
    a key it sends that would need a database lookup is refused with 429
    before the lookup (`check`), so guessing keys costs the database nothing.
    With rate limiting off, or its storage down, neither refuses.
    """

    MESSAGE = "Too many failed authentication attempts."

    def __init__(self, config, limiter: Limiter) -> None:
        self.item = parse(config["AUTH_FAILURE_RATE_LIMIT"])
        self.limiter = limiter

    def _bucket(self) -> tuple[str, str, str]:
        return self.limiter._key_prefix, "auth-failures", get_remote_address()

    def _refuse(self, reset_at: float) -> None:
        app_state().metrics.rate_limit_hits.labels("auth_failures").inc()
        extra = {"event": "rate_limited", "limit": str(self.item), "key_kind": "auth_failures"}
        log.warning("rate limit exceeded", extra=extra)
        raise RateLimited(seconds_until(reset_at, time.time()), self.MESSAGE)

    def check(self) -> None:
        """Raise RateLimited if this IP's budget is spent (counts nothing)."""
        if not current_app.config["RATELIMIT_ENABLED"]:
            return
        try:
            remaining, reset_at = peek_window(self.limiter.limiter, self.item, *self._bucket())
        except Exception:  # storage down: the lookup decides, as without limits
            return
        if remaining <= 0:
            self._refuse(reset_at)

    def charge(self) -> None:
        """Spend one failure of this IP's budget; raise RateLimited if that was past the budget."""
        if not current_app.config["RATELIMIT_ENABLED"]:
            return
        try:
            allowed, _, reset_at = hit_window(self.limiter.limiter, self.item, *self._bucket())
        except Exception:  # storage down: the request is refused anyway (401)
            return
        if not allowed:
            self._refuse(reset_at)
