"""HTTP for pool administration (admin key for writes) and a user's leases across pools."""

from __future__ import annotations

from flask import current_app, jsonify, request

from ..authentication import require_admin
from ..clock import token_time
from ..db import run_transaction
from ..errors import ValidationError
from ..models import DEFAULT_POOL
from ..openapi import COMMON, Answer, operation
from ..telemetry import emit, timed
from ..tokens.reads import list_user_leases
from ..tokens.schemas import (
    CURSOR,
    LIMIT,
    cursor_arg,
    encode_cursor,
    id_position,
    json_body,
    limit_arg,
    parse_uuid,
    serialise,
)
from . import bp, service
from .schemas import (
    FORCE,
    LEASE_STATE,
    POOL,
    USER_ID,
    Pool,
    PoolCreate,
    PoolPage,
    PoolSettings,
    UserLeasePage,
)


def _shown(pool: dict) -> dict:
    """A pool as answered: the `default` pool's leases last TOKEN_LIFETIME_SECONDS (the setting wins)."""
    if pool["name"] == DEFAULT_POOL:
        pool = pool | {"lifetime_seconds": current_app.config["TOKEN_LIFETIME_SECONDS"]}
    return serialise(pool)


def _pool_name(value) -> str | None:
    return value if isinstance(value, str) and service.NAME.fullmatch(value) else None


@bp.get("/api/pools")
@operation(
    "List pools with their counts, by name, keyset-paginated",
    operation_id="listPools",
    parameters=(LIMIT, CURSOR),
    answers={200: Answer("A page of pools", PoolPage)},
    errors=(400, 429, 503),
)
def list_pools():
    limit, after = limit_arg(), cursor_arg("pools", _pool_name)
    items, last = run_transaction(service.list_pools, limit=limit, after=after, now=token_time())
    return jsonify({"pools": [_shown(p) for p in items], "next_cursor": encode_cursor("pools", last)})


@bp.post("/api/pools")
@operation(
    "Create a pool (admin)",
    operation_id="createPool",
    admin=True,
    body=PoolCreate,
    answers={201: Answer("The pool; Location: /api/pools/<name>", Pool)},
    errors=(400, 401, 403, 409, *COMMON),
)
def create_pool():
    require_admin()
    spec = service.validate(json_body(), creating=True)
    pool = run_transaction(service.create, spec, now=token_time())
    response = jsonify(_shown(pool))
    response.status_code = 201
    response.headers["Location"] = f"/api/pools/{pool['name']}"
    return response


@bp.get("/api/pools/<pool_name:pool>")
@operation(
    "One pool with its counts",
    operation_id="getPool",
    parameters=(POOL,),
    answers={200: Answer("The pool", Pool)},
    errors=(404, 429, 503),
)
def get_pool(pool):
    return jsonify(_shown(run_transaction(service.view, pool, now=token_time())))


@bp.patch("/api/pools/<pool_name:pool>")
@operation(
    "Change a pool's settings (admin); growing adds tokens, shrinking never ends a lease",
    operation_id="updatePool",
    admin=True,
    parameters=(POOL,),
    body=PoolSettings,
    answers={200: Answer("The pool", Pool)},
    errors=(400, 401, 403, 404, 409, *COMMON),
)
def update_pool(pool):
    require_admin()
    changes = service.validate(json_body(), creating=False)
    return jsonify(_shown(run_transaction(service.update_pool, pool, changes, now=token_time())))


@bp.delete("/api/pools/<pool_name:pool>")
@operation(
    "Delete a pool, its tokens and their history (admin; not the default pool)",
    operation_id="deletePool",
    admin=True,
    parameters=(POOL, FORCE),
    answers={204: Answer("Deleted")},
    errors=(400, 401, 403, 404, 409, 429, 503),
)
def delete_pool(pool):
    require_admin()
    force = request.args.get("force", "false")
    if force not in ("true", "false"):
        raise ValidationError("Invalid force. Must be 'true' or 'false'.", details={"field": "force"})
    with timed() as elapsed:
        cleared = run_transaction(service.delete_pool, pool, force=force == "true", now=token_time())
    if cleared:  # as DELETE .../tokens/active: the leases the deletion ended
        emit("release", "success", reason="cleared", pool=pool, count=cleared, duration_ms=elapsed())
    return "", 204


@bp.get("/api/users/<user_id>/leases")
@operation(
    "A user's leases in every pool, newest first, with how each ended",
    operation_id="listUserLeases",
    parameters=(USER_ID, LEASE_STATE, LIMIT, CURSOR),
    answers={200: Answer("A page of leases", UserLeasePage)},
    errors=(400, 429, 503),
)
def user_leases(user_id):
    uid = parse_uuid(user_id, "user_id")
    state = request.args.get("state", "all")
    if state not in ("active", "all"):
        raise ValidationError("Invalid state filter. Must be 'active' or 'all'.", details={"field": "state"})
    kind = f"leases:{uid}:{state}"
    limit, before = limit_arg(), cursor_arg(kind, id_position)
    items, last = run_transaction(
        list_user_leases, uid, active_only=state == "active", limit=limit, before=before, now=token_time()
    )
    return jsonify(
        {
            "user_id": str(uid),
            "leases": [serialise(x) for x in items],
            "next_cursor": encode_cursor(kind, last),
        }
    )
