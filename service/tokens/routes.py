"""HTTP for the pool: parse, call the domain in one transaction, serialise."""

from __future__ import annotations

import functools

from flask import current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from ..authentication import is_admin, require_admin
from ..clock import token_time
from ..db import run_transaction
from ..errors import ApiError, status_name
from ..openapi import COMMON, Answer, operation
from ..parsing import canonical_uuid
from ..telemetry import emit, timed
from . import bp, reads, service
from .schemas import (
    CURSOR,
    LIMIT,
    STATE,
    TOKEN_ID,
    ActivateBody,
    Cleared,
    HolderBody,
    Lease,
    RenewedToken,
    Summary,
    Token,
    TokenPage,
    UsagePage,
    cursor_arg,
    encode_cursor,
    holder_from,
    id_position,
    json_body,
    limit_arg,
    parse_uuid,
    serialise,
    state_arg,
    user_id_from,
)


def lifetime() -> int:
    """A lease's length in seconds (TOKEN_LIFETIME_SECONDS)."""
    return current_app.config["TOKEN_LIFETIME_SECONDS"]


def failure_reason(exc: Exception) -> str:
    """The `reason` of a failure event: stable snake_case words, never free text."""
    if isinstance(exc, ApiError):
        return exc.reason
    if isinstance(exc, HTTPException):  # e.g. 413 from the body size limit
        return status_name(exc.code or 500)
    if isinstance(exc, SQLAlchemyError):
        return "database_error"
    return "internal_error"


def observed(event: str):
    """Emit a failure event with its reason when the view raises."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            with timed() as elapsed:
                try:
                    return view(*args, **kwargs)
                except Exception as exc:
                    emit(
                        event,
                        "failure",
                        reason=failure_reason(exc),
                        token_id=kwargs.get("token_id"),
                        duration_ms=elapsed(),
                    )
                    raise

        return wrapper

    return decorate


@bp.post("/activate")
@operation(
    "Lease a token to a user (same token if the user already holds one)",
    operation_id="activate",
    body=ActivateBody,
    answers={200: Answer("The lease", Lease)},
    errors=(400, *COMMON),
)
@observed("activation")
def activate():
    """Lease a token. A new lease's answer carries its `lease_id`, the holder's proof for
    release and renew; the running lease returned again (`existing`) shows it to admin keys only."""
    user_id = user_id_from(json_body())
    with timed() as elapsed:
        lease = run_transaction(
            service.activate, user_id, lifetime=lifetime(), now=token_time(), single_statement=True
        )
    emit(
        "activation",
        "success",
        reason=lease.outcome,
        token_id=str(lease.token_id),
        user_id=str(user_id),
        duration_ms=elapsed(),
    )
    answer = {
        "token_id": lease.token_id,
        "user_id": lease.user_id,
        "activated_at": lease.activated_at,
        "expires_at": lease.expires_at,
    }
    if lease.outcome != "existing" or is_admin():
        answer["lease_id"] = lease.lease_id
    return jsonify(serialise(answer))


@bp.get("")
@operation(
    "List tokens, keyset-paginated by an opaque cursor",
    operation_id="listTokens",
    parameters=(STATE, LIMIT, CURSOR),
    answers={200: Answer("A page of tokens", TokenPage)},
    errors=(400, 429, 503),
)
def list_tokens():
    state, limit = state_arg(), limit_arg()
    after = cursor_arg("tokens", canonical_uuid)
    items, last = run_transaction(
        reads.list_tokens,
        state=state,
        limit=limit,
        after=after,
        now=token_time(),
        lease_ids=is_admin(),
        single_statement=True,
    )
    return jsonify({"tokens": [serialise(t) for t in items], "next_cursor": encode_cursor("tokens", last)})


@bp.get("/summary")
@operation(
    "Pool counts",
    operation_id="summary",
    answers={200: Answer("Counts", Summary)},
    errors=(429, 503),
)
def summary():
    counts = run_transaction(reads.summary, now=token_time(), single_statement=True)
    return jsonify(counts | {"lifetime_seconds": lifetime()})


@bp.get("/<token_id:token_id>")
@operation(
    "One token with its usage count",
    operation_id="getToken",
    parameters=(TOKEN_ID,),
    answers={200: Answer("The token", Token)},
    errors=(400, 404, 429, 503),
)
def get_token(token_id):
    token = run_transaction(
        reads.get_token,
        parse_uuid(token_id, "token_id"),
        now=token_time(),
        lease_ids=is_admin(),
        single_statement=True,
    )
    return jsonify(serialise(token))


@bp.get("/<token_id:token_id>/usages")
@operation(
    "The token's lease history, newest first",
    operation_id="listUsages",
    parameters=(TOKEN_ID, LIMIT, CURSOR),
    answers={200: Answer("A page of usages", UsagePage)},
    errors=(400, 404, 429, 503),
)
def usages(token_id):
    tid = parse_uuid(token_id, "token_id")
    limit, before = limit_arg(), cursor_arg(f"usages:{tid}", id_position)
    items, last = run_transaction(reads.list_usages, tid, limit=limit, before=before, lease_ids=is_admin())
    return jsonify(
        {
            "token_id": str(tid),
            "usages": [serialise(u) for u in items],
            "next_cursor": encode_cursor(f"usages:{tid}", last),
        }
    )


@bp.post("/<token_id:token_id>/release")
@operation(
    "End a lease: by its holder (user_id and lease_id), or by an admin (no body)",
    operation_id="release",
    parameters=(TOKEN_ID,),
    body=HolderBody,
    body_required=False,
    answers={200: Answer("The released token", Token)},
    errors=(400, 401, 403, 404, 409, *COMMON),
)
@observed("release")
def release(token_id):
    tid = parse_uuid(token_id, "token_id")
    holder = holder_from(json_body(), required=False)
    if holder is None:
        require_admin()
    with timed() as elapsed:
        token, user_id = run_transaction(service.release, tid, holder=holder, now=token_time())
    emit(
        "release",
        "success",
        reason="released",
        token_id=str(tid),
        user_id=str(user_id),
        duration_ms=elapsed(),
    )
    return jsonify(serialise(token))


@bp.post("/<token_id:token_id>/renew")
@operation(
    "The holder (user_id and lease_id) extends the lease to now + lifetime",
    operation_id="renew",
    parameters=(TOKEN_ID,),
    body=HolderBody,
    answers={200: Answer("The renewed token", RenewedToken)},
    errors=(400, 404, 409, *COMMON),
)
@observed("renewal")
def renew(token_id):
    tid = parse_uuid(token_id, "token_id")
    holder = holder_from(json_body())
    with timed() as elapsed:
        token = run_transaction(service.renew, tid, holder=holder, lifetime=lifetime(), now=token_time())
    emit("renewal", "success", token_id=str(tid), user_id=str(holder.user_id), duration_ms=elapsed())
    return jsonify(serialise(token | {"lease_id": holder.lease_id}))  # the holder presented it


@bp.delete("/active")
@operation(
    "Release every active token (admin)",
    operation_id="clearActive",
    admin=True,
    answers={200: Answer("How many leases were cleared", Cleared)},
    errors=(401, 403, 429, 503),
)
@observed("release")
def clear_active():
    require_admin()
    with timed() as elapsed:
        cleared = run_transaction(service.clear_active, now=token_time())
    emit("release", "success", reason="cleared", count=cleared, duration_ms=elapsed())
    return jsonify({"cleared_count": cleared, "status": "ok"})
