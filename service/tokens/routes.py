"""HTTP for the pool: parse, call the domain in one transaction, serialise."""

from __future__ import annotations

import functools

from flask import current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from ..clock import token_time
from ..db import run_transaction
from ..errors import ApiError, status_name
from ..parsing import canonical_uuid
from ..security import is_admin, require_admin
from ..telemetry import emit, timed
from . import bp, reads, service
from .schemas import (
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
def summary():
    counts = run_transaction(reads.summary, now=token_time(), single_statement=True)
    return jsonify(counts | {"lifetime_seconds": lifetime()})


@bp.get("/<token_id:token_id>")
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
@observed("renewal")
def renew(token_id):
    tid = parse_uuid(token_id, "token_id")
    holder = holder_from(json_body())
    with timed() as elapsed:
        token = run_transaction(service.renew, tid, holder=holder, lifetime=lifetime(), now=token_time())
    emit("renewal", "success", token_id=str(tid), user_id=str(holder.user_id), duration_ms=elapsed())
    return jsonify(serialise(token | {"lease_id": holder.lease_id}))  # the holder presented it


@bp.delete("/active")
@observed("release")
def clear_active():
    require_admin()
    with timed() as elapsed:
        cleared = run_transaction(service.clear_active, now=token_time())
    emit("release", "success", reason="cleared", count=cleared, duration_ms=elapsed())
    return jsonify({"cleared_count": cleared, "status": "ok"})
