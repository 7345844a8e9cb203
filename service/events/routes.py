"""HTTP for events: a page (`GET /api/events`) and a stream (`GET /api/events/stream`)."""

from __future__ import annotations

import itertools
import re

from flask import Response, current_app, jsonify, request

from ..db import run_transaction
from ..errors import StreamsFull, ValidationError
from ..openapi import Answer, operation
from ..parsing import canonical_int, int_arg
from ..state import app_state
from ..tokens.schemas import BIGINT_MAX, LIMIT, limit_arg
from . import bp, outbox
from .schemas import AFTER, LAST_EVENT_ID, POOL, POOL_NAME_PATTERN, STREAM, EventPage
from .stream import event_json, first_round, held, hold_seconds

POOL_NAME = re.compile(POOL_NAME_PATTERN)


def pool_arg() -> str | None:
    """`?pool=`: a pool name, or None for every pool. Raises ValidationError."""
    pool = request.args.get("pool")
    if pool is None:
        return None
    if not POOL_NAME.fullmatch(pool):
        raise ValidationError("Invalid pool name.", details={"field": "pool"})
    return pool


@bp.get("")
@operation(
    "A page of events, oldest first",
    operation_id="listEvents",
    parameters=(POOL, AFTER, LIMIT),
    answers={200: Answer("Events after `after`", EventPage)},
    errors=(400, 429, 503),
)
def page():
    """Events after `?after=` (default 0), oldest first; `last_event_id` is where the next page starts."""
    pool = pool_arg()
    after = int_arg("after", 0, 0, BIGINT_MAX)
    limit = limit_arg()
    events, last = run_transaction(outbox.page, after=after, limit=limit, pool=pool)
    return jsonify({"events": [event_json(e) for e in events], "last_event_id": last})


def _resume_from() -> int | None:
    """`Last-Event-ID` (what a reconnecting client sends), else `?after=`; None: from now on."""
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        value = canonical_int(header.strip(), 0, BIGINT_MAX)
        if value is None:
            raise ValidationError(
                "Invalid Last-Event-ID. Must be an event id.", details={"field": "Last-Event-ID"}
            )
        return value
    if "after" in request.args:
        return int_arg("after", 0, 0, BIGINT_MAX)
    return None


@bp.get("/stream")
@operation(
    "Events as Server-Sent Events (resume with Last-Event-ID)",
    operation_id="streamEvents",
    parameters=(POOL, AFTER, LAST_EVENT_ID),
    answers={200: Answer("The stream", STREAM, media_type="text/event-stream")},
    errors=(400, 429, 503),
)
def live():
    """Events as Server-Sent Events, from `Last-Event-ID` (or `?after=`, or now) on."""
    pool = pool_arg()
    after = _resume_from()
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the app, not its proxy
    hold = hold_seconds(app.config, request.method)
    if hold > 0 and app_state(app).event_feed.streams >= app.config["EVENT_STREAMS_PER_WORKER"]:
        raise StreamsFull(
            "Too many open event streams on this worker. Please retry shortly.", reason="streams_full"
        )
    if after is None:  # what was written before this request is not news to it
        after = outbox.latest()
    start, seen = first_round(app, after=after, pool=pool, held=hold > 0)
    if hold <= 0:  # the whole answer now: no worker held
        # nginx may take it whole (buffered) and free the worker however slowly the client reads
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "yes"}
        return Response(start, mimetype="text/event-stream", headers=headers)
    peer = request.environ.get("gunicorn.socket")  # the client's connection, to see it hang up
    return Response(  # held open: nginx passes each message on as it comes
        itertools.chain([start.encode()], held(app, after=seen, pool=pool, seconds=hold, peer=peer)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
