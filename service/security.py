"""Who is calling (API keys), who may do what, and the security headers of every answer."""

from __future__ import annotations

import hmac
import logging
import threading
import time

from flask import Response, current_app, g, request
from flask_cors import CORS
from flask_talisman import Talisman

from . import ratelimit_headers as rate_limit_headers
from .apikeys import service as apikeys
from .apikeys.service import Identity, hash_key
from .config import ConfigError
from .db import run_transaction
from .errors import Forbidden, Unauthorized
from .invalidation import Generation
from .redirects import https_redirect

log = logging.getLogger("tokenpool.security")
BOOTSTRAP_ADMIN = "ADMIN_API_KEY"
TOUCH_EVERY_SECONDS = 60


def presented_key() -> str | None:
    """The API key the caller sent in `X-API-Key` or `Authorization: Bearer`, if any."""
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def is_cors_preflight() -> bool:
    """A browser's CORS preflight (Fetch standard): OPTIONS with Origin and Access-Control-Request-Method."""
    headers = request.headers
    return request.method == "OPTIONS" and "Origin" in headers and "Access-Control-Request-Method" in headers


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


def _auth_failure(reason: str, name: str | None = None) -> None:
    """Log and count a rejected key (never the key itself), and charge the failure limit."""
    current_app.extensions["tokenpool.metrics"].auth_failures.labels(reason).inc()
    log.warning(
        "authentication failed",
        extra={"event": "auth_failure", "reason": reason, "ip": request.remote_addr, "key_name": name},
    )
    budget = current_app.extensions.get("tokenpool.auth_failures")
    if budget is not None:
        budget.charge()


def identify(key: str) -> Identity | None:
    """The identity of a key: the bootstrap `ADMIN_API_KEY` or a stored key. Logs failures.

    Raises RateLimited when the caller's IP spent its failed-auth budget and
    the key is not known to this process (no database lookup is made).
    """
    admin_key = current_app.config.get(BOOTSTRAP_ADMIN)
    if admin_key and hmac.compare_digest(hash_key(key), hash_key(admin_key)):
        return Identity("bootstrap-admin", "admin")
    cache: KeyCache = current_app.extensions["tokenpool.key_cache"]
    found = cache.cached(key)
    if found is None:
        budget = current_app.extensions.get("tokenpool.auth_failures")
        if budget is not None:
            budget.check()  # an IP that spent its failed-auth budget gets 429 before any lookup
        found = cache.lookup(key)
    identity, revoked_name = found
    if identity is None:
        _auth_failure("revoked_key" if revoked_name else "unknown_key", revoked_name)
        return None
    cache.touch(identity.name)
    return identity


def authenticate() -> None:
    """before_request: put the caller's identity on `g.api_key` (None without a key).

    Raises Unauthorized for an invalid key, or for no key when `API_AUTH_REQUIRED`.
    """
    g.api_key = None
    if not g.route_class.keyed or request.method == "OPTIONS":
        return  # a CORS preflight never carries the key; OPTIONS runs no view
    key = presented_key()
    if key is None:
        if current_app.config["API_AUTH_REQUIRED"]:
            _auth_failure("missing_key")
            raise Unauthorized("An API key is required.", reason="missing_key")
        return
    g.api_key = identify(key)
    if g.api_key is None:
        raise Unauthorized("Invalid API key.", reason="invalid_key")


def _keys_configured() -> bool:
    return bool(current_app.config.get(BOOTSTRAP_ADMIN)) or run_transaction(apikeys.active_count) > 0


def is_admin() -> bool:
    """The caller presented an admin key (the open development mode without keys does not count)."""
    identity = g.get("api_key")
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
    identity = g.get("api_key")
    if identity is None:
        if current_app.config["APP_ENV"] != "production" and not _keys_configured():
            return
        _auth_failure("missing_key")
        raise Unauthorized("An admin API key is required.", reason="missing_key")
    if identity.role != "admin":
        _auth_failure("not_admin", identity.name)
        raise Forbidden("This operation needs an admin API key.", reason="not_admin")


class OnceTalisman(Talisman):
    """Flask-Talisman, with its per-endpoint options and headers worked out once, not per response.

    Talisman resolves a view's options four times per request and rebuilds the
    same policy strings for every response (~25 us of CPU). Its answer depends
    only on the endpoint and on whether the request came over HTTPS (HSTS), so
    we ask Talisman once per pair and copy its headers. With a CSP nonce (none
    is configured: a JSON API) every response is left to Talisman.
    """

    def __init__(self, app, **options) -> None:
        self._options_of: dict = {}
        self._headers_of: dict = {}
        super().__init__(app, **options)

    def _get_local_options(self):
        endpoint = request.endpoint
        options = self._options_of.get(endpoint)
        if options is None:
            options = self._options_of[endpoint] = super()._get_local_options()
        return options

    def _force_https(self):
        """Talisman's redirect answers 302 (a POST is followed with GET), builds the URL from the
        Host header and has an HTML body; ours is service/redirects.py. HTTPS is the request's
        `wsgi.url_scheme` alone: the proxy hops trusted by ProxyFix decide it (service/__init__.py).
        """
        if self._get_local_options()["force_https"] and not request.is_secure:
            raise https_redirect()
        return None

    def _set_content_security_policy_headers(self, headers, options):
        """Talisman's headers, plus `X-XSS-Protection: 0`.

        Talisman 1.1.0 can only send `1; mode=block` (its `x_xss_protection`), which
        OWASP's Secure Headers Project advises against: the filters it switched on
        are gone from current browsers, and where left they could be abused to
        leak or suppress content. `0` turns an old browser's filter off.
        """
        super()._set_content_security_policy_headers(headers, options)
        headers["X-XSS-Protection"] = "0"

    def _make_nonce(self):
        if self.content_security_policy_nonce_in:
            super()._make_nonce()

    def _set_response_headers(self, response):
        if self.content_security_policy_nonce_in:
            return super()._set_response_headers(response)
        # HSTS on HTTPS only; the raw scheme headers were consumed by ProxyFix and removed
        key = (request.endpoint, request.is_secure)
        headers = self._headers_of.get(key)
        if headers is None:
            probe = Response()
            probe.headers.clear()
            super()._set_response_headers(probe)
            headers = self._headers_of[key] = tuple(probe.headers.items())
        target = response.headers
        for name, value in headers:
            target[name] = value
        return response


def _allowed_origins(config) -> list[str]:
    origins = [o.strip() for o in (config.get("ALLOWED_ORIGINS") or "").split(",") if o.strip()]
    if "*" in origins and config["APP_ENV"] == "production" and not config["ALLOW_ANY_ORIGIN"]:
        raise ConfigError("ALLOWED_ORIGINS may not be '*' in production unless ALLOW_ANY_ORIGIN=true")
    return origins


def talisman_options(config) -> dict:
    """The Flask-Talisman options of an app with these settings (keyword arguments of `Talisman`)."""
    return dict(
        force_https=config["FORCE_HTTPS"],
        force_https_permanent=False,
        strict_transport_security=True,  # Talisman sends HSTS only on HTTPS requests
        strict_transport_security_max_age=config["HSTS_MAX_AGE"],
        strict_transport_security_include_subdomains=False,
        content_security_policy={"default-src": "'none'", "frame-ancestors": "'none'"},
        frame_options="DENY",
        referrer_policy="strict-origin-when-cross-origin",
        permissions_policy={"geolocation": "()", "camera": "()", "microphone": "()"},
        session_cookie_secure=config["FORCE_HTTPS"],
        x_xss_protection=False,  # never "1; mode=block"; OnceTalisman sends "0"
    )


def init_security(app) -> None:
    """API-key authentication, Talisman headers and CORS, all from settings."""
    generation = app.extensions["tokenpool.generation"]
    app.extensions["tokenpool.key_cache"] = KeyCache(app.config["API_KEY_CACHE_SECONDS"], generation)
    app.before_request(authenticate)
    OnceTalisman(app, **talisman_options(app.config))
    origins = _allowed_origins(app.config)
    if origins:
        CORS(
            app,
            resources={r"/api/*": {"origins": origins}},
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID", "X-Correlation-ID"],
            expose_headers=["X-Request-ID", "X-Correlation-ID", *rate_limit_headers.EXPOSED],
            max_age=600,
        )
