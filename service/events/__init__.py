"""The events blueprint: the outbox of lease changes, as pages and as Server-Sent Events."""

from flask import Blueprint

from ..route_table import KEYED, declare
from ..state import app_state

bp = declare(Blueprint("events", __name__, url_prefix="/api/events"), KEYED)


def init_events(app) -> None:
    """The process's feed for its open streams (its thread starts with the first stream) and its
    publisher of new events (started by service/background.py)."""
    from .publisher import init_publisher
    from .stream import Feed

    state = app_state(app)
    state.event_feed = Feed(app)
    state.publisher = init_publisher(app, state.telemetry)


from . import routes  # noqa: E402,F401  (registers the views on bp)
