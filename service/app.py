"""The Flask class of the service and the WSGI middleware in front of it.

`App` is Flask minus per-request work that gives the same answer every time,
with one typed state object (service/state.py) and a request that remembers
its caller (service/authentication.py). `trust_proxy_headers` decides which
forwarded headers count.
"""

from __future__ import annotations

from flask import Flask
from flask import Request as FlaskRequest
from flask import Response as FlaskResponse
from flask.sessions import SessionInterface
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import RequestRedirect

from .apikeys.service import Identity
from .invalidation import Generation
from .json_provider import OrjsonProvider
from .redirects import routing_redirect
from .state import EXTENSION, AppState
from .telemetry import Telemetry


class NoSessions(SessionInterface):
    """A JSON API authenticated by API keys keeps no cookie session: none is opened or saved.

    Flask's default would build a signing serializer on every request (~2 % of activation's CPU).
    """

    def open_session(self, app, request):
        """None: no session is opened."""
        return None  # Flask then uses its (empty, unsaved) null session

    def save_session(self, app, session, response):
        """Nothing is saved."""
        return None


class Request(FlaskRequest):
    """Flask's request, plus the caller's identity once `authentication.caller()` worked it out."""

    caller_known: bool = False
    caller: Identity | None = None

    def get_data(self, cache=True, as_text=False, parse_form_data=False):
        """werkzeug's, and a body without Content-Length (chunked) over MAX_CONTENT_LENGTH is 413.

        werkzeug reads such a body through `LimitedStream(..., is_max=True)`, whose
        `readall` stops at the limit without looking further: a longer body came
        through cut there. One byte more from the server's terminated input
        (WSGI's `wsgi.input_terminated`) tells a body of exactly the limit from a
        longer one. Every body reader (`get_json`, `json_body`) comes through here.
        """
        data = super().get_data(cache=cache, as_text=as_text, parse_form_data=parse_form_data)
        limit = self.max_content_length
        if limit is not None and self.content_length is None and len(data) >= limit:
            if self.environ["wsgi.input"].read(1):
                raise RequestEntityTooLarge()
        return data


# headers werkzeug's get_wsgi_headers rewrites (made absolute URLs / IRIs turned into URIs)
_REWRITTEN = frozenset(("location", "content-location"))


class Response(FlaskResponse):
    """Flask's response, sent without werkzeug's copy of its headers when the copy would change nothing.

    werkzeug's `get_wsgi_headers` copies every header through `Headers.add`
    (which checks each value again) and then adjusts the copy: Location and
    Content-Location, no Content-Length on 1xx and 204, no entity headers on
    304, a Content-Length worked out for a buffered body without one. When
    none of these applies, the copy equals the headers as they are, so they
    are listed directly (`to_wsgi_list`, a new list either way): ~6 us per
    response. tests/test_wsgi_response.py compares both ways on every case and
    fails when werkzeug changes either method.
    """

    def get_wsgi_response(self, environ):
        """werkzeug's (app_iter, status, headers), its header copy skipped when it would equal the headers."""
        status = self.status_code
        if status < 200 or status == 204 or status == 304:
            return super().get_wsgi_response(environ)
        headers, has_length = self.headers, False
        for key, _ in headers:
            lower = key.lower()
            if lower in _REWRITTEN:
                return super().get_wsgi_response(environ)
            if lower == "content-length":
                has_length = True
        if not has_length and self.automatically_set_content_length and self.is_sequence:
            return super().get_wsgi_response(environ)
        return self.get_app_iter(environ), self.status, headers.to_wsgi_list()


class App(Flask):
    """Flask, minus per-request work that gives the same answer every time."""

    session_interface = NoSessions()
    json_provider_class = OrjsonProvider
    request_class = Request
    response_class = Response

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict = {}
        self.extensions[EXTENSION] = AppState(Telemetry(), Generation())

    def raise_routing_exception(self, request):
        """werkzeug's own redirects (merged slashes) as our 308: JSON body, Location not from Host."""
        if isinstance(request.routing_exception, RequestRedirect):
            raise routing_redirect(request.routing_exception)
        super().raise_routing_exception(request)

    def ensure_sync(self, func):
        """Flask's answer, remembered per function: it asked `inspect` for each of ~20 hooks per request."""
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync


# Headers that claim the scheme of the client's connection. ProxyFix reads X-Forwarded-Proto
# from the trusted hops only; the rest are read by nobody here, but a library that looks at the
# raw header (Talisman does) must not be fooled, so none of them stays in the environ.
SCHEME_HEADERS = (
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_SSL",
    "HTTP_X_FORWARDED_PROTOCOL",
    "HTTP_X_FORWARDED_SCHEME",
    "HTTP_X_URL_SCHEME",
    "HTTP_FRONT_END_HTTPS",
    "HTTP_FORWARDED",
)


def trust_proxy_headers(app: Flask) -> None:
    """The one place that decides which forwarded headers count: ProxyFix for exactly the
    configured hops (PROXY_FIX_X_FOR, PROXY_FIX_X_PROTO); gunicorn trusts none of them
    (gunicorn.conf.py). After it, `wsgi.url_scheme` and `REMOTE_ADDR` are the truth and the
    raw scheme headers are dropped.
    """
    x_for, x_proto = app.config["PROXY_FIX_X_FOR"], app.config["PROXY_FIX_X_PROTO"]
    inner = app.wsgi_app

    def drop_scheme_headers(environ, start_response):
        for name in SCHEME_HEADERS:
            environ.pop(name, None)
        return inner(environ, start_response)

    # Flask's documented way to add WSGI middleware (mypy sees a method being replaced)
    app.wsgi_app = drop_scheme_headers  # type: ignore[method-assign]
    if x_for or x_proto:  # outermost: ProxyFix reads the headers before they are dropped
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=x_for, x_proto=x_proto)  # type: ignore[method-assign]
