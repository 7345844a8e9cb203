"""The headers of every answer: Flask-Talisman's security headers, CORS, and the HTTPS redirect.

Talisman sends the policy (CSP, HSTS on HTTPS, frame, referrer, permissions,
nosniff). The HTTPS redirect (`FORCE_HTTPS`) is ours (`require_https`: a 308
from service/redirects.py); probes and scrapes are exempt from it by their
route class (service/route_table.py). CORS comes from `ALLOWED_ORIGINS`.
"""

from __future__ import annotations

from flask import Response, g, request
from flask_cors import CORS
from flask_talisman import Talisman
from werkzeug.datastructures import Headers

from . import ratelimit_headers as rate_limit_headers
from .config import ConfigError
from .redirects import https_redirect


def is_cors_preflight() -> bool:
    """A browser's CORS preflight (Fetch standard): OPTIONS with Origin and Access-Control-Request-Method."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    if req.method != "OPTIONS":
        return False
    headers = req.headers
    return "Origin" in headers and "Access-Control-Request-Method" in headers


def add_checked(headers: Headers, pairs) -> None:
    """Append (name, value) pairs whose values are known to be header-safe strings (no newline).

    werkzeug's `Headers.add`/`extend` check every value again (~0.5 us each);
    these were checked when first made (Talisman's, on a probe response) or are
    built from numbers here. Reaches werkzeug's private `Headers._list`:
    tests/protection/test_library_tripwires.py fails when werkzeug changes it.
    """
    headers._list.extend(pairs)


class OnceTalisman(Talisman):
    """Flask-Talisman, with the headers of each endpoint and scheme worked out once, not per response.

    Talisman rebuilds the same policy strings for every response. Its headers
    depend only on the endpoint (per-view options) and on whether the request
    came over HTTPS (HSTS), so we ask Talisman once per pair, on a probe
    response, and copy its headers. With a CSP nonce (none is configured: a
    JSON API) every response is left to Talisman.

    The private method overridden (`_set_response_headers`, its after-request
    hook) saves 15-16 us of CPU per request (docs/PERFORMANCE.md, "Library
    privates"; bench/library_overrides.py); tests/protection/test_library_tripwires.py
    fails when our headers stop equalling stock Talisman's. Its two
    before-request hooks (`_force_https`, `_make_nonce`) are overridden too:
    they read the endpoint's options on every request to find, here, nothing to
    do (`force_https` is off: the redirect is `require_https`; no nonce), so
    that answer is kept per endpoint and Talisman's hook runs only where it
    has work (~9 us per request); the tripwires pin both methods.

    We add `X-XSS-Protection: 0`: Talisman 1.1.0 can only send `1; mode=block`
    (its `x_xss_protection`), which OWASP's Secure Headers Project advises
    against: the filters it switched on are gone from current browsers, and
    where left they could be abused to leak or suppress content. `0` turns an
    old browser's filter off.
    """

    def __init__(self, app, **options) -> None:
        self._headers_of: dict = {}
        self._work_of: dict = {}  # endpoint -> (redirects, makes a nonce): Talisman's options of its view
        super().__init__(app, **options)

    def _before_work(self) -> tuple[bool, bool]:
        endpoint = request._get_current_object().endpoint  # type: ignore[attr-defined]  # one proxy lookup
        work = self._work_of.get(endpoint)
        if work is None:
            options = self._get_local_options()  # Talisman's per-view options of this endpoint
            nonce = bool(options["content_security_policy"] and options["content_security_policy_nonce_in"])
            work = self._work_of[endpoint] = (bool(options["force_https"]), nonce)
        return work

    def _force_https(self):
        if self._before_work()[0]:
            return super()._force_https()
        # the rest of Talisman's hook when it does not redirect
        if self.session_cookie_secure and not self.app.debug:
            self.app.config["SESSION_COOKIE_SECURE"] = True
        return None

    def _make_nonce(self):
        if self._before_work()[1]:
            super()._make_nonce()

    def _set_response_headers(self, response):
        if self.content_security_policy_nonce_in:
            super()._set_response_headers(response)
            response.headers["X-XSS-Protection"] = "0"
            return response
        # HSTS on HTTPS only; the raw scheme headers were consumed by ProxyFix and removed
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
        key = (req.endpoint, req.is_secure)
        headers = self._headers_of.get(key)
        if headers is None:
            probe = Response()
            probe.headers.clear()
            super()._set_response_headers(probe)
            probe.headers["X-XSS-Protection"] = "0"
            pairs = tuple(probe.headers.items())
            headers = self._headers_of[key] = (pairs, frozenset(name.lower() for name, _ in pairs))
        pairs, names = headers
        target = response.headers
        if any(name.lower() in names for name, _ in target):  # a view set one: replaced, as Talisman does
            for name, value in pairs:
                target[name] = value
        else:  # none there yet: setting each is appending each
            add_checked(target, pairs)
        return response


def _allowed_origins(config) -> list[str]:
    origins = [o.strip() for o in (config.get("ALLOWED_ORIGINS") or "").split(",") if o.strip()]
    if "*" in origins and config["APP_ENV"] == "production" and not config["ALLOW_ANY_ORIGIN"]:
        raise ConfigError("ALLOWED_ORIGINS may not be '*' in production unless ALLOW_ANY_ORIGIN=true")
    return origins


def talisman_options(config) -> dict:
    """The Flask-Talisman options of an app with these settings (keyword arguments of `Talisman`)."""
    return dict(
        force_https=False,  # ours: `require_https`
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


def require_https() -> None:
    """before_request with `FORCE_HTTPS`: a plain-HTTP request is answered with our redirect.

    Talisman's own (off: `force_https=False`) answers 302, which a POST follows
    with GET, builds the URL from the Host header and has an HTML body; ours is
    service/redirects.py. HTTPS is the request's `wsgi.url_scheme` alone: the
    proxy hops trusted by ProxyFix decide it (service/app.py). Probes and
    scrapes (their route class, service/route_table.py) are answered over plain HTTP.
    """
    if not request.is_secure and g.route_class.https_redirect:
        raise https_redirect()


def init_response_headers(app) -> None:
    """Talisman's headers, the HTTPS redirect and CORS, all from settings."""
    OnceTalisman(app, **talisman_options(app.config))
    if app.config["FORCE_HTTPS"]:
        app.before_request(require_https)
    origins = _allowed_origins(app.config)
    if origins:
        CORS(
            app,
            resources={r"/api/*": {"origins": origins}},
            allow_headers=["Content-Type", "X-API-Key", "Authorization", "X-Request-ID", "X-Correlation-ID"],
            expose_headers=["X-Request-ID", "X-Correlation-ID", *rate_limit_headers.EXPOSED],
            max_age=600,
        )
