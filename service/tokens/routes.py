"""HTTP for a pool's tokens: parse, call the domain in one transaction, serialise.

The blueprint is registered twice: at /api/tokens (the `default` pool) and at
/api/pools/<pool>/tokens (any pool); the views take the pool's name as `pool`.
"""

from __future__ import annotations

import functools

from flask import current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from ..authentication import is_admin, require_admin
from ..clock import token_time
from ..db import run_transaction
from ..errors import ApiError, status_name
from ..models import DEFAULT_POOL, DEFAULT_POOL_ID
from ..openapi import COMMON, Answer, operation
from ..parsing import canonical_uuid
from ..pools.schemas import Ticket
from ..telemetry import emit, timed
from . import bp, queue, reads, service
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
    fencing_token_from,
    holder_from,
    id_position,
    json_body,
    limit_arg,
    parse_uuid,
    serialise,
    state_arg,
    user_id_from,
)
from .sweeper import wake_scheduler


def lifetime(pool: str = DEFAULT_POOL) -> int | None:
    """The lease lifetime to grant: the setting for the `default` pool, None (the pool's own) for others."""
    if pool != DEFAULT_POOL:
        return None
    return current_app._get_current_object().config["TOKEN_LIFETIME_SECONDS"]  # type: ignore[attr-defined]


def pool_id_of(conn, pool: str) -> int:
    """The id of the pool named `pool` (the `default` pool's without asking). Raises NotFound."""
    return DEFAULT_POOL_ID if pool == DEFAULT_POOL else service.get_pool(conn, pool).id


def one_statement(pool: str) -> bool:
    """A read of the `default` pool is one statement (no pool to look up): sent in autocommit."""
    return pool == DEFAULT_POOL


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
                        pool=kwargs.get("pool", DEFAULT_POOL),
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
    answers={
        200: Answer("The lease", Lease),
        202: Answer("A full queue pool: the user's waiting ticket; Location: its URL", Ticket),
    },
    errors=(400, 404, 409, *COMMON),
)
@observed("activation")
def activate(pool=DEFAULT_POOL):
    """Lease a token. A new lease's answer carries its `lease_id`, the holder's proof for
    release and renew; the running lease returned again (`existing`) shows it to admin keys only.
    A full `queue` pool answers 202 with the user's waiting ticket."""
    user_id = user_id_from(json_body())
    with timed() as elapsed:
        try:
            lease = run_transaction(
                service.activate,
                user_id,
                pool=pool,
                lifetime=lifetime(pool),
                now=token_time(),
                single_statement=True,
            )
        except service.PoolFull:
            ticket, created = run_transaction(queue.enqueue, user_id, pool=pool, now=token_time())
            if created:
                emit("ticket", "success", reason="queued", pool=pool, user_id=str(user_id))
            if ticket["status"] != "granted":
                wake_scheduler(current_app)  # it sleeps until the next expiry of a queue it knows
                return _queued(ticket, elapsed())
            lease = _granted_lease(ticket)
    emit(
        "activation",
        "success",
        reason=lease.outcome,
        pool=pool,
        token_id=str(lease.token_id),
        user_id=str(user_id),
        duration_ms=elapsed(),
    )
    answer = {
        "token_id": lease.token_id,
        "user_id": lease.user_id,
        "activated_at": lease.activated_at,
        "expires_at": lease.expires_at,
        "fencing_token": lease.fencing_token,
        "evicted": lease.outcome == "evicted",
    }
    if lease.outcome != "existing" or is_admin():
        answer["lease_id"] = lease.lease_id
    return jsonify(serialise(answer))


def _queued(ticket: dict, duration_ms: float):
    """202 with the waiting ticket and its URL."""
    emit(
        "activation",
        "success",
        reason="queued",
        pool=ticket["pool"],
        user_id=str(ticket["user_id"]),
        duration_ms=duration_ms,
    )
    response = jsonify(serialise(ticket))
    response.status_code = 202
    response.headers["Location"] = f"/api/pools/{ticket['pool']}/tickets/{ticket['ticket_id']}"
    return response


def _granted_lease(ticket: dict) -> service.Lease:
    """The lease of a ticket granted while it was queued (a token was free by then)."""
    return service.Lease(
        ticket["token_id"],
        ticket["user_id"],
        ticket["activated_at"],
        ticket["expires_at"],
        "available",
        ticket["lease_id"],
        ticket["fencing_token"],
        ticket["pool"],
    )


def _cursor_kind(pool: str, listing: str) -> str:
    """A cursor's listing: the default pool's keep their old names, so issued cursors stay valid."""
    return listing if pool == DEFAULT_POOL else f"{listing}@{pool}"


@bp.get("")
@operation(
    "List tokens, keyset-paginated by an opaque cursor",
    operation_id="listTokens",
    parameters=(STATE, LIMIT, CURSOR),
    answers={200: Answer("A page of tokens", TokenPage)},
    errors=(400, 429, 503),
)
def list_tokens(pool=DEFAULT_POOL):
    state, limit = state_arg(), limit_arg()
    after = cursor_arg(_cursor_kind(pool, "tokens"), canonical_uuid)

    def page(conn):
        return reads.list_tokens(
            conn,
            pool_id=pool_id_of(conn, pool),
            state=state,
            limit=limit,
            after=after,
            now=token_time(),
            lease_ids=is_admin(),
        )

    items, last = run_transaction(page, single_statement=one_statement(pool))
    next_cursor = encode_cursor(_cursor_kind(pool, "tokens"), last)
    return jsonify({"tokens": [serialise(t) for t in items], "next_cursor": next_cursor})


@bp.get("/summary")
@operation(
    "Pool counts",
    operation_id="summary",
    answers={200: Answer("Counts", Summary)},
    errors=(429, 503),
)
def summary(pool=DEFAULT_POOL):
    if pool == DEFAULT_POOL:  # one statement; its lifetime is the setting
        counts = run_transaction(reads.summary, now=token_time(), single_statement=True)
        return jsonify(counts | {"lifetime_seconds": lifetime()})

    def counts_of(conn):
        spec = service.get_pool(conn, pool)
        return reads.summary(conn, pool_id=spec.id, now=token_time()), spec.lifetime_seconds

    counts, pool_lifetime = run_transaction(counts_of)
    return jsonify(counts | {"lifetime_seconds": pool_lifetime})


@bp.get("/<token_id:token_id>")
@operation(
    "One token with its usage count",
    operation_id="getToken",
    parameters=(TOKEN_ID,),
    answers={200: Answer("The token", Token)},
    errors=(400, 404, 429, 503),
)
def get_token(token_id, pool=DEFAULT_POOL):
    tid = parse_uuid(token_id, "token_id")

    def read(conn):
        return reads.get_token(
            conn, tid, pool_id=pool_id_of(conn, pool), now=token_time(), lease_ids=is_admin()
        )

    return jsonify(serialise(run_transaction(read, single_statement=one_statement(pool))))


@bp.get("/<token_id:token_id>/usages")
@operation(
    "The token's lease history, newest first",
    operation_id="listUsages",
    parameters=(TOKEN_ID, LIMIT, CURSOR),
    answers={200: Answer("A page of usages", UsagePage)},
    errors=(400, 404, 429, 503),
)
def usages(token_id, pool=DEFAULT_POOL):
    tid = parse_uuid(token_id, "token_id")
    kind = _cursor_kind(pool, f"usages:{tid}")
    limit, before = limit_arg(), cursor_arg(kind, id_position)

    def page(conn):
        return reads.list_usages(
            conn, tid, pool_id=pool_id_of(conn, pool), limit=limit, before=before, lease_ids=is_admin()
        )

    items, last = run_transaction(page)  # two statements: the token, then its usages
    return jsonify(
        {
            "token_id": str(tid),
            "usages": [serialise(u) for u in items],
            "next_cursor": encode_cursor(kind, last),
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
def release(token_id, pool=DEFAULT_POOL):
    tid = parse_uuid(token_id, "token_id")
    body = json_body()
    fencing_token = fencing_token_from(body)  # first: the body model would coerce "7"
    holder = holder_from(body, required=False)
    if holder is None:
        require_admin()
    with timed() as elapsed:
        token, user_id = run_transaction(
            service.release, tid, pool=pool, holder=holder, fencing_token=fencing_token, now=token_time()
        )
    emit(
        "release",
        "success",
        reason="released",
        pool=pool,
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
def renew(token_id, pool=DEFAULT_POOL):
    tid = parse_uuid(token_id, "token_id")
    body = json_body()
    fencing_token = fencing_token_from(body)
    holder = holder_from(body)
    with timed() as elapsed:
        token = run_transaction(
            service.renew,
            tid,
            pool=pool,
            holder=holder,
            lifetime=lifetime(pool),
            fencing_token=fencing_token,
            now=token_time(),
        )
    emit(
        "renewal", "success", pool=pool, token_id=str(tid), user_id=str(holder.user_id), duration_ms=elapsed()
    )
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
def clear_active(pool=DEFAULT_POOL):
    require_admin()
    with timed() as elapsed:
        cleared = run_transaction(service.clear_active, pool=pool, now=token_time())
    emit("release", "success", reason="cleared", pool=pool, count=cleared, duration_ms=elapsed())
    return jsonify({"cleared_count": cleared, "status": "ok"})
