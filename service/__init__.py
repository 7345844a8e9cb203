"""tokenpool: a Flask service leasing a fixed pool of tokens."""

from __future__ import annotations

from . import blank_variables  # noqa: F401  (first: before any module imports prometheus_client)

# isort: split
from .api_index import bp as api_bp
from .apikeys.cli import apikeys_cli
from .app import App, trust_proxy_headers
from .authentication import init_authentication
from .background import init_background
from .config import load_config
from .config_cli import config_cli
from .console import bp as console_bp
from .database_cli import database_cli
from .db import init_db
from .errors import register_error_handlers
from .events import bp as events_bp
from .events import init_events
from .health import bp as health_bp
from .logging_setup import configure_logging
from .metrics import init_metrics
from .monitoring import bp as monitoring_bp
from .monitoring import init_monitoring
from .observation import init_observation
from .openapi import bp as openapi_bp
from .pools import bp as pools_bp
from .pools.cli import pools_cli
from .ratelimit import build_rate_limiter, init_rate_limits
from .request_context import init_request_context
from .response_headers import init_response_headers
from .route_table import init_route_table
from .slow_log import init_slow_log
from .tokens import bp as tokens_bp
from .tokens.cli import tokens_cli
from .tokens.sweeper import init_sweeper
from .tracing import init_tracing


def create_app(config: dict | None = None) -> App:
    """Build the app; `config` overrides settings read from the environment.

    Raises ConfigError naming the first bad setting. Opens no database connection.
    """
    # service/static is the console's (its blueprint serves it), not a folder the app serves as a whole
    app = App(__name__, instance_relative_config=True, static_folder=None)
    load_config(app, config)
    configure_logging(app.config)
    trust_proxy_headers(app)
    init_db(app)
    init_events(app)
    for bp in (api_bp, tokens_bp, events_bp, health_bp, openapi_bp, monitoring_bp, console_bp, pools_bp):
        app.register_blueprint(bp)
    # the same token routes on any pool (the views take the pool's name; the same route class)
    app.register_blueprint(tokens_bp, name="pool_tokens", url_prefix="/api/pools/<pool_name:pool>/tokens")
    init_route_table(app)  # each blueprint's class: read by everything below
    init_observation(app)
    init_request_context(app)
    init_slow_log(app)
    init_metrics(app)
    init_tracing(app)
    limiter = build_rate_limiter(app)
    init_authentication(app, failure_budget=limiter.auth_failures)
    init_response_headers(app)
    init_monitoring(app)
    register_error_handlers(app)
    init_rate_limits(app, limiter)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(pools_cli)
    app.cli.add_command(apikeys_cli)
    app.cli.add_command(database_cli)
    app.cli.add_command(config_cli)
    init_sweeper(app)
    init_background(app)
    return app
