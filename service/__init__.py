"""tokenpool: a Flask service leasing a fixed pool of tokens."""

from __future__ import annotations

from flask import Flask
from flask.sessions import SessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import RequestRedirect

from .api_index import bp as api_bp
from .apikeys.cli import apikeys_cli
from .config import load_config
from .config_cli import config_cli
from .console import bp as console_bp
from .database_cli import database_cli
from .db import init_db
from .errors import register_error_handlers
from .health import bp as health_bp
from .invalidation import init_invalidation
from .json_provider import OrjsonProvider
from .logging_setup import configure_logging
from .metrics import bp as metrics_bp
from .metrics import init_metrics
from .monitoring import bp as monitoring_bp
from .monitoring import init_monitoring
from .observation import init_observation
from .openapi import bp as openapi_bp
from .ratelimit import init_rate_limits
from .redirects import routing_redirect
from .request_context import init_request_context
from .route_table import init_route_table
from .security import init_security
from .slow_log import init_slow_log
from .telemetry import init_telemetry
from .tokens import bp as tokens_bp
from .tokens.cli import tokens_cli
from .tokens.sweeper import init_sweeper
from .tracing import init_tracing


def create_app(config: dict | None = None) -> Flask:
    """Build the app; `config` overrides settings read from the environment.

    Raises ConfigError naming the first bad setting. Opens no database connection.
    """
    # service/static is the console's (its blueprint serves it), not a folder the app serves as a whole
    app = App(__name__, instance_relative_config=True, static_folder=None)
    load_config(app, config)
    configure_logging(app.config)
    _trust_proxy_headers(app)
    init_telemetry(app)
    init_db(app)
    init_invalidation(app)
    for bp in (api_bp, tokens_bp, health_bp, openapi_bp, monitoring_bp, console_bp):
        app.register_blueprint(bp)
    if app.config["METRICS_ENABLED"]:
        app.register_blueprint(metrics_bp)
    init_route_table(app)  # each blueprint's class: read by everything below
    init_observation(app)
    init_request_context(app)
    init_slow_log(app)
    init_metrics(app)
    init_tracing(app)
    init_security(app)  # authenticates before the limiter counts
    init_monitoring(app)
    register_error_handlers(app)
    init_rate_limits(app)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(apikeys_cli)
    app.cli.add_command(database_cli)
    app.cli.add_command(config_cli)
    init_sweeper(app)
    return app


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


class App(Flask):
    """Flask, minus per-request work that gives the same answer every time."""

    session_interface = NoSessions()
    json_provider_class = OrjsonProvider

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict = {}

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


def _trust_proxy_headers(app: Flask) -> None:
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
