"""What one app builds at start and reads per request: one typed object, `app_state(app)`.

The App (service/app.py) creates it with the two objects other subsystems
subscribe to (token events, cache invalidation); each subsystem's `init_*`
sets the attributes it owns, and per-request code reads them through
`app_state()`.
Per app, not per module: two apps in one process (tests) never share a cache,
a sweeper or a subscriber list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from .authentication import FailureBudget, KeyCache
    from .deadline import Deadline
    from .events.publisher import Publisher
    from .events.stream import Feed
    from .health.state import HealthState
    from .invalidation import Generation
    from .metrics import TokenMetrics
    from .metrics.endpoint import ScrapeExporter
    from .monitoring.store import BufferedStore, MemoryStore, RedisStore
    from .observation import Observer
    from .ratelimit import PolicyLimiter
    from .route_table import RouteTable
    from .telemetry import Telemetry
    from .tokens.sweeper import Sweeper

EXTENSION = "tokenpool"  # the one key of `app.extensions` this service uses


class AppState:
    """The app's long-lived objects, each set by the `init_*` that owns it (named in brackets).

    An attribute without a default is read only after its owner ran: reading it
    earlier raises AttributeError, which is a bug in the factory's order.
    """

    deadline: Deadline  # the database deadline and stall state (db.init_db)
    metrics: TokenMetrics  # Prometheus metrics of the service (metrics.init_metrics)
    key_cache: KeyCache  # recent API key lookups (authentication.init_authentication)
    health: HealthState  # probe state and the cached detailed report (health blueprint)
    monitoring: MemoryStore | RedisStore | BufferedStore  # request figures (monitoring.init_monitoring)
    limiter: PolicyLimiter  # Flask-Limiter with our policy (ratelimit.init_rate_limits)
    api_index: bytes  # the `GET /api` body, rendered once (api_index blueprint)
    console_assets: dict[str, str]  # {asset file: digest} of the console (console blueprint)
    route_table: RouteTable  # each blueprint's route class (route_table.init_route_table)
    observer: Observer  # the subscribers of each request's record (observation.init_observation)
    event_feed: Feed  # the recent events for this process's streams (events.init_events)
    publisher: Publisher  # numbers the events this process writes (events.init_events)

    def __init__(self, telemetry: Telemetry, generation: Generation) -> None:
        self.telemetry = telemetry  # token event subscribers (service/telemetry.py)
        self.generation = generation  # caches dropped across processes (service/invalidation.py)
        self.query_observers: list[Callable[[str, float], None]] = []  # db.observe_queries
        self.auth_failure_budget: FailureBudget | None = None  # authentication.init_authentication
        self.sweeper: Sweeper | None = None  # with SWEEPER_ENABLED (tokens.sweeper.init_sweeper)
        self.exporter: ScrapeExporter | None = None  # /metrics, with METRICS_ENABLED (metrics.init_metrics)


def app_state(app: Flask | None = None) -> AppState:
    """The state of `app` (default: the current app)."""
    return (app or current_app._get_current_object()).extensions[EXTENSION]  # type: ignore[attr-defined]
