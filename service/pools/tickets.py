"""HTTP for the tickets of a `queue` pool: status and cancel (activation queues them)."""

from __future__ import annotations

from flask import jsonify, request

from ..authentication import is_admin, require_admin
from ..clock import token_time
from ..db import run_transaction
from ..openapi import COMMON, Answer, operation
from ..telemetry import emit
from ..tokens import queue
from ..tokens.schemas import json_body, parse_uuid, serialise
from . import bp
from .schemas import POOL, TICKET_ID, TICKET_USER, Ticket, TicketHolder


@bp.get("/api/pools/<pool_name:pool>/tickets/<ticket_id>")
@operation(
    "A ticket: waiting (with its position), granted (with its lease), cancelled or expired",
    operation_id="getTicket",
    parameters=(POOL, TICKET_ID, TICKET_USER),
    answers={200: Answer("The ticket", Ticket)},
    errors=(400, 404, 429, 503),
)
def get_ticket(pool, ticket_id):
    tid = parse_uuid(ticket_id, "ticket_id")
    asker = request.args.get("user_id")
    user_id = parse_uuid(asker, "user_id") if asker is not None else None
    ticket = run_transaction(
        queue.get_ticket, tid, pool=pool, now=token_time(), lease_id=is_admin(), user_id=user_id
    )
    return jsonify(serialise(ticket))


@bp.delete("/api/pools/<pool_name:pool>/tickets/<ticket_id>")
@operation(
    "Cancel a waiting ticket: by its user (user_id in the body), or by an admin (no body)",
    operation_id="cancelTicket",
    parameters=(POOL, TICKET_ID),
    body=TicketHolder,
    body_required=False,
    answers={200: Answer("The cancelled ticket", Ticket)},
    errors=(400, 401, 403, 404, 409, *COMMON),
)
def cancel_ticket(pool, ticket_id):
    tid = parse_uuid(ticket_id, "ticket_id")
    body = json_body()
    user_id = parse_uuid(body["user_id"], "user_id") if body.get("user_id") is not None else None
    if user_id is None:
        require_admin()
    ticket = run_transaction(queue.cancel, tid, pool=pool, user_id=user_id, now=token_time())
    emit("ticket", "success", reason="cancelled", pool=pool, user_id=str(ticket["user_id"]))
    return jsonify(serialise(ticket))
