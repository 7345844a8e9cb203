"""tokenpool: a Flask service leasing a fixed pool of tokens."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import load_config
from .db import init_db
from .errors import register_error_handlers
from .health import bp as health_bp
from .logging_setup import configure_logging
from .metrics import init_metrics
from .openapi import bp as openapi_bp
from .request_context import init_request_context
from .telemetry import init_telemetry
from .tokens import bp as tokens_bp
from .tokens.cli import tokens_cli
from .tokens.sweeper import init_sweeper


def create_app(config: dict | None = None) -> Flask:
    """Build the app; `config` overrides settings read from the environment.

    Raises ConfigError naming the first bad setting. Opens no database connection.
    """
    app = Flask(__name__, instance_relative_config=True)
    load_config(app, config)
    configure_logging(app.config)
    if app.config["PROXY_FIX_X_FOR"] or app.config["PROXY_FIX_X_PROTO"]:
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=app.config["PROXY_FIX_X_FOR"], x_proto=app.config["PROXY_FIX_X_PROTO"]
        )
    init_request_context(app)
    init_telemetry(app)
    init_db(app)
    init_metrics(app)
    register_error_handlers(app)
    for bp in (tokens_bp, health_bp, openapi_bp):
        app.register_blueprint(bp)
    app.cli.add_command(tokens_cli)
    init_sweeper(app)
    return app
