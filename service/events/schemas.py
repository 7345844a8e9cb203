"""The events API's parameters and answer models (the contract in /openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from ..models import EVENT_TYPES
from ..openapi import Body, CanonicalUUID
from ..tokens.schemas import BIGINT_MAX

POOL_NAME_PATTERN = "[a-z0-9][a-z0-9_-]{0,62}"

POOL = {
    "name": "pool",
    "in": "query",
    "description": "only this pool's events",
    "schema": {"type": "string", "pattern": f"^{POOL_NAME_PATTERN}$"},
}
AFTER = {
    "name": "after",
    "in": "query",
    "description": "events with a larger event_id",
    "schema": {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX, "default": 0},
}
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "description": (
        "the last event id received: the stream resumes after it (wins over `after`); "
        f"a decimal integer from 0 to {BIGINT_MAX} (an event id is a PostgreSQL bigint), else 400"
    ),
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}


class Event(Body):
    """One lease change (never its lease_id)."""

    event_id: int = Field(ge=1, description="Strictly increasing, in the order events became visible")
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    pool: str
    token_id: CanonicalUUID | None
    user_id: CanonicalUUID | None
    fencing_token: int | None
    at: datetime


class EventPage(Body):
    """A page of events, oldest first."""

    events: list[Event]
    last_event_id: int = Field(ge=0, description="Continue with after=last_event_id")


STREAM = {
    "type": "string",
    "description": "retry:, then one message per event (id: event_id, event: type, data: the Event as"
    " JSON) and heartbeat comment lines",
}
