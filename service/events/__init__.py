"""The events blueprint: the outbox of lease changes, as pages and as Server-Sent Events."""

from flask import Blueprint

from ..route_table import KEYED, declare
from ..state import app_state

bp = declare(Blueprint("events", __name__, url_prefix="/api/events"), KEYED)


def init_events(app) -> None:
    """The process's feed for its open streams (its thread starts with the first stream)."""
    from .stream import Feed

    app_state(app).event_feed = Feed(app)


from . import routes  # noqa: E402,F401  (registers the views on bp)
