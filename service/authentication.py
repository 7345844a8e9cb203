"""Who is calling and what they may do: API keys, `require_admin`, the failed-auth budget.

A request's caller is worked out once, at the first ask (`caller()`): by the
`authenticate` hook, or by the rate limiter, which counts keyed callers per
key. Whichever of the two runs first authenticates, so their order does not
matter. Failed attempts are logged, counted and charged to the caller's IP
budget (`FailureBudget`, given to `init_authentication`).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol, cast

from flask import current_app, g, request

from .apikeys import service as apikeys
from .apikeys.service import Identity, hash_key
from .db import run_transaction
from .errors import Forbidden, Unauthorized
from .invalidation import Generation
from .state import app_state

if TYPE_CHECKING:
    from .app import Request

log = logging.getLogger("tokenpool.security")  # the logger docs/OBSERVABILITY.md names
BOOTSTRAP_ADMIN = "ADMIN_API_KEY"
TOUCH_EVERY_SECONDS = 60


def presented_key() -> str | None:
    """The API key the caller sent in `X-API-Key` or `Authorization: Bearer`, if any."""
    headers = request._get_current_object().headers  # type: ignore[attr-defined]  # one proxy lookup
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    return bearer_token(headers)


def bearer_token(headers=None) -> str | None:
    """The credentials of `Authorization: Bearer <token>` (the scheme in any case, RFC 7235
    section 2.1), if any; `headers`: the request's, if the caller has them at hand."""
    auth = (headers if headers is not None else request.headers).get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


class KeyCache:
    """Recent key lookups of this process, so a keyed request costs no query most of the time.

    Entries live `ttl` seconds, and are dropped everywhere within
    invalidation.CHECK_SECONDS when a key is created or revoked (`generation`).
    """

    def __init__(self, ttl: float, generation: Generation) -> None:
        self.ttl = ttl
        self.generation = generation
        generation.on_change(self.drop)
        self._entries: dict[str, tuple[float, Identity | None, str | None]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def cached(self, key: str) -> tuple[Identity | None, str | None] | None:
        """(identity, revoked name) as `apikeys.lookup` answered lately, or None if not known here."""
        self.generation.sync()
        entry = self._entries.get(hash_key(key))
        if entry and time.monotonic() - entry[0] < self.ttl:
            self.hits += 1
            return entry[1], entry[2]
        return None

    def lookup(self, key: str) -> tuple[Identity | None, str | None]:
        """`apikeys.lookup` in the database, remembered for `ttl` seconds."""
        digest, now = hash_key(key), time.monotonic()
        self.misses += 1
        identity, revoked_name = run_transaction(apikeys.lookup, key)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (now, identity, revoked_name)
        return identity, revoked_name

    def touch(self, name: str) -> None:
        """Write last_used_at at most once a minute per key and process."""
        now = time.monotonic()
        if now - self._touched.get(name, -TOUCH_EVERY_SECONDS) >= TOUCH_EVERY_SECONDS:
            self._touched[name] = now
            run_transaction(apikeys.touch, name)

    def drop(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def stats(self) -> dict:
        """`{hits, misses, size, hit_rate (0..1), ttl_seconds}` of this process's cache."""
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "size": len(self._entries),
            "hit_rate": round(self.hits / lookups, 4) if lookups else 0.0,
            "ttl_seconds": self.ttl,
        }


class FailureBudget(Protocol):
    """A per-IP budget of rejected keys (the rate limiter's `AuthFailureBudget`)."""

    def check(self) -> None:
        """Raise RateLimited if this IP's budget is spent (counts nothing)."""

    def charge(self) -> None:
        """Spend one rejected attempt of this IP's budget; raise RateLimited past it."""


def record_auth_failure(reason: str, name: str | None = None, *, guess: bool) -> None:
    """Log and count a failed authentication or authorisation (never the credential itself: an
    API key, the metrics bearer token); a `guess` (a credential was presented and is not valid)
    is also charged to the IP's failure budget, so guessing is throttled. A missing credential
    or a valid key without the role guesses nothing: it is not charged (a client that forgot
    its header must not lock its valid key out)."""
    state = app_state()
    state.metrics.auth_failures.labels(reason).inc()
    log.warning(
        "authentication failed",
        extra={"event": "auth_failure", "reason": reason, "ip": request.remote_addr, "key_name": name},
    )
    if guess and state.auth_failure_budget is not None:
        state.auth_failure_budget.charge()


def identify(key: str) -> Identity | None:
    """The identity of a key: the bootstrap `ADMIN_API_KEY` or a stored key. Logs failures.

    Raises RateLimited when the caller's IP spent its failed-auth budget and
    the key is not known to this process (no database lookup is made).
    """
    admin_key = current_app.config.get(BOOTSTRAP_ADMIN)
    if admin_key and hmac.compare_digest(hash_key(key), hash_key(admin_key)):
        return Identity("bootstrap-admin", "admin")
    state = app_state()
    cache = state.key_cache
    found = cache.cached(key)
    if found is None:
        if state.auth_failure_budget is not None:
            state.auth_failure_budget.check()  # an IP that spent its budget gets 429 before any lookup
        found = cache.lookup(key)
    identity, revoked_name = found
    if identity is None:
        record_auth_failure("revoked_key" if revoked_name else "unknown_key", revoked_name, guess=True)
        return None
    cache.touch(identity.name)
    return identity


def caller() -> Identity | None:
    """The identity of this request's API key; None without a key or outside the `keyed` routes.

    Authenticates at the first ask of a request and remembers the answer on the
    request (service/app.py `Request`). Raises Unauthorized for an invalid key,
    or for no key when `API_AUTH_REQUIRED`; RateLimited as `identify`.
    """
    current = cast("Request", request._get_current_object())  # type: ignore[attr-defined]  # one proxy lookup
    if current.caller_known:
        return current.caller
    current.caller_known = True  # a failure is raised once: the request ends with it
    current.caller = _authenticate()
    return current.caller


def known_caller() -> Identity | None:
    """The caller as far as this request has worked it out (None before that, or without a key).

    Never authenticates: for the access line and other after-the-fact readers.
    """
    return cast("Request", request._get_current_object()).caller  # type: ignore[attr-defined]


def _authenticate() -> Identity | None:
    route_class = g._get_current_object().route_class
    if not route_class.keyed or request._get_current_object().method == "OPTIONS":  # type: ignore[attr-defined]
        return None  # a CORS preflight never carries the key; OPTIONS runs no view
    key = presented_key()
    if key is None:
        if current_app._get_current_object().config["API_AUTH_REQUIRED"]:  # type: ignore[attr-defined]
            record_auth_failure("missing_key", guess=False)
            raise Unauthorized("An API key is required.", reason="missing_key")
        return None
    identity = identify(key)
    if identity is None:
        raise Unauthorized("Invalid API key.", reason="invalid_key")
    return identity


def authenticate() -> None:
    """before_request: know the caller (`caller()`) before any view runs, limits on or off."""
    caller()


def _keys_configured() -> bool:
    return bool(current_app.config.get(BOOTSTRAP_ADMIN)) or run_transaction(apikeys.active_count) > 0


def is_admin() -> bool:
    """The caller presented an admin key (the open development mode without keys does not count)."""
    identity = caller()
    return identity is not None and identity.role == "admin"


def require_admin() -> None:
    """Allow the call only with an admin key. Open in development and testing while no key exists.

    OPTIONS is let through, as in `authenticate`: a CORS preflight never carries the
    key and runs no view, and refusing it would block the keyed call behind it and
    charge the caller's failed-authentication budget.

    Raises Unauthorized (no key), Forbidden (a client key).
    """
    if request.method == "OPTIONS":
        return
    identity = caller()
    if identity is None:
        if current_app.config["APP_ENV"] != "production" and not _keys_configured():
            return
        record_auth_failure("missing_key", guess=False)
        raise Unauthorized("An admin API key is required.", reason="missing_key")
    if identity.role != "admin":
        record_auth_failure("not_admin", identity.name, guess=False)
        raise Forbidden("This operation needs an admin API key.", reason="not_admin")


def init_authentication(app, failure_budget: FailureBudget | None) -> None:
    """Authenticate every request's API key; rejected keys charge `failure_budget` (None: no budget)."""
    state = app_state(app)
    state.key_cache = KeyCache(app.config["API_KEY_CACHE_SECONDS"], state.generation)
    state.auth_failure_budget = failure_budget
    app.before_request(authenticate)
