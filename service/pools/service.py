"""Creating, listing, resizing and deleting pools (the administration; leases live in tokens/service.py).

Every function takes an open Connection inside a transaction. Changes of one
pool are serialised by a transaction-scoped lock (the one `flask tokens seed`
takes), and take token row locks before the pool row, in the order an
activation takes them, so they never deadlock with one.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, text, update

from ..db import is_postgres
from ..errors import Conflict, ValidationError
from ..models import DEFAULT_POOL, POLICIES
from ..timeutil import as_utc, utcnow
from ..tokens import queue, reads
from ..tokens.reads import _read_now, pools, tokens
from ..tokens.service import clear_pool, get_pool, resolve_now, seed

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_SIZE, MAX_LIFETIME = 1_000_000, 86_400
DEFAULTS = {"policy": "evict", "max_lifetime_seconds": None, "max_queue": 1000, "max_wait_seconds": 300}
SETTINGS = ("size", "lifetime_seconds", "policy", "max_lifetime_seconds", "max_queue", "max_wait_seconds")
# the default pool is configured by MAX_ACTIVE_TOKENS and TOKEN_LIFETIME_SECONDS, policy evict
DEFAULT_POOL_FIXED = ("size", "lifetime_seconds", "policy")


def _integer(body: dict, field: str, low: int, high: int, *, nullable: bool = False) -> int | None:
    value = body.get(field)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"Invalid {field}. Must be an integer between {low} and {high}.",
            details={"field": field},
            reason=f"invalid_{field}",
        )
    return value


def validate(body: dict, *, creating: bool) -> dict:
    """The pool settings of a create (all required ones) or update (any but the name) body.

    Raises ValidationError naming the first field missing, unknown or malformed.
    """
    allowed = (("name",) if creating else ()) + SETTINGS
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValidationError(f"Unknown field: {unknown[0]}", details={"field": unknown[0]})
    required = ("name", "size", "lifetime_seconds") if creating else ()
    for field in required:
        if body.get(field) is None:
            raise ValidationError(
                f"Missing required parameter: {field}", details={"field": field}, reason=f"missing_{field}"
            )
    spec: dict[str, object] = {}
    if "name" in body:
        if not isinstance(body["name"], str) or not NAME.fullmatch(body["name"]):
            raise ValidationError(
                "Invalid name. Must match ^[a-z0-9][a-z0-9_-]{0,62}$.", details={"field": "name"}
            )
        spec["name"] = body["name"]
    if "size" in body:
        spec["size"] = _integer(body, "size", 1, MAX_SIZE)
    if "lifetime_seconds" in body:
        spec["lifetime_seconds"] = _integer(body, "lifetime_seconds", 1, MAX_LIFETIME)
    if "max_lifetime_seconds" in body:
        spec["max_lifetime_seconds"] = _integer(body, "max_lifetime_seconds", 1, 2**31 - 1, nullable=True)
    if "max_queue" in body:
        spec["max_queue"] = _integer(body, "max_queue", 0, 1_000_000)
    if "max_wait_seconds" in body:
        spec["max_wait_seconds"] = _integer(body, "max_wait_seconds", 1, MAX_LIFETIME)
    if "policy" in body:
        if body["policy"] not in POLICIES:
            raise ValidationError(
                "Invalid policy. Must be 'evict', 'reject' or 'queue'.", details={"field": "policy"}
            )
        spec["policy"] = body["policy"]
    return spec


def _check_lifetimes(lifetime: int, max_lifetime: int | None) -> None:
    if max_lifetime is not None and max_lifetime < lifetime:
        raise ValidationError(
            "Invalid max_lifetime_seconds. Must be null or at least lifetime_seconds.",
            details={"field": "max_lifetime_seconds"},
        )


def _lock(conn: Connection, pool_id: int) -> None:
    """Serialise changes of one pool (and `flask tokens seed`) until the commit."""
    if is_postgres(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(7316001, :pool)"), {"pool": pool_id})


def create(conn: Connection, spec: dict, *, now: datetime | None = None) -> dict:
    """Create a pool with `size` tokens. Raises Conflict when the name exists."""
    spec = DEFAULTS | spec
    _check_lifetimes(spec["lifetime_seconds"], spec["max_lifetime_seconds"])
    if conn.scalar(select(pools.c.id).where(pools.c.name == spec["name"])) is not None:
        raise Conflict("A pool with this name exists", details={"pool": spec["name"]}, reason="pool_exists")
    pool_id = conn.execute(
        insert(pools).values(**spec, fencing_token=0, created_at=resolve_now(conn, now)).returning(pools.c.id)
    ).scalar_one()
    seed(conn, spec["size"], pool_id=pool_id)
    return view(conn, spec["name"], now=now)


def update_pool(conn: Connection, name: str, changes: dict, *, now: datetime | None = None) -> dict:
    """Change a pool's settings. Growing adds tokens at once; shrinking retires free tokens
    first, then the leases ending first (they run to their end and are never leased again).

    A `queue` pool hands new tokens to its waiting tickets; a pool whose policy stops being
    `queue` cancels them.

    Raises NotFound, Conflict (a setting the `default` pool takes from the configuration).
    """
    pool = get_pool(conn, name)
    if name == DEFAULT_POOL and any(
        f in changes and changes[f] != getattr(pool, f) for f in DEFAULT_POOL_FIXED
    ):
        raise Conflict(
            "The default pool's size and lifetime come from the settings (MAX_ACTIVE_TOKENS,"
            " TOKEN_LIFETIME_SECONDS) and its policy is always evict",
            details={"pool": name, "fixed": sorted(f for f in DEFAULT_POOL_FIXED if f in changes)},
            reason="default_pool_configured",
        )
    _check_lifetimes(
        changes.get("lifetime_seconds", pool.lifetime_seconds),
        changes.get("max_lifetime_seconds", pool.max_lifetime_seconds),
    )
    _lock(conn, pool.id)
    queue.lock_queue(conn, pool.id)  # before the pool row (seeding updates it): the queue's lock order
    if pool.policy == "queue" and changes.get("policy", "queue") != "queue":
        queue.cancel_waiting(conn, pool, resolve_now(conn, now))
    size = changes.pop("size", pool.size)
    if size > pool.size:
        seed(conn, size, pool_id=pool.id)
    elif size < pool.size:
        _retire(conn, pool.id, size, now)
        conn.execute(update(pools).where(pools.c.id == pool.id).values(size=size))
    if changes:
        conn.execute(update(pools).where(pools.c.id == pool.id).values(**changes))
    queue.hand_over(conn, pool.id, now=now)
    return view(conn, name, now=now)


def _retire(conn: Connection, pool_id: int, size: int, now: datetime | None) -> None:
    """Retire the pool's tokens beyond `size`: free ones first, then the leases ending first.

    Each batch is one UPDATE of rows chosen and locked by a subquery whose choice is a
    condition of the WHERE, not only of the ORDER BY: PostgreSQL re-checks the WHERE on a
    row changed by a transaction that committed while it waited for the row's lock, and
    passes over it, but never re-sorts (README.md, "Design decisions", "Leasing": the
    activation function's rule). "Free" is judged at that moment (`clock_timestamp()`), and
    `retired_at` is taken then too, so no lease started after its token's retirement.
    """
    excess = (
        conn.execute(
            select(func.count())
            .select_from(tokens)
            .where(tokens.c.pool_id == pool_id, tokens.c.retired_at.is_(None))
        ).scalar_one()
        - size
    )
    at = as_utc(now) if now is not None else func.clock_timestamp() if is_postgres(conn) else utcnow()
    free, held = tokens.c.expires_at <= at, tokens.c.expires_at > at  # tokens.expires_at's invariant
    while excess > 0:
        retired = _retire_first(conn, pool_id, free, excess, at)
        retired = retired or _retire_first(conn, pool_id, held, excess, at)
        if not retired:  # no token left unretired (a token is either free or held)
            return
        excess -= retired


def _retire_first(conn: Connection, pool_id: int, condition, excess: int, at) -> int:
    """Retire up to `excess` (at most 5,000) of the pool's tokens that meet `condition`, those
    whose `expires_at` comes first; how many were retired."""
    chosen = (
        select(tokens.c.id)
        .where(tokens.c.pool_id == pool_id, tokens.c.retired_at.is_(None), condition)
        .order_by(tokens.c.expires_at, tokens.c.id)
        .limit(min(excess, 5000))
        .with_for_update()
    )
    return conn.execute(update(tokens).where(tokens.c.id.in_(chosen)).values(retired_at=at)).rowcount


def delete_pool(conn: Connection, name: str, *, force: bool, now: datetime | None = None) -> int:
    """Delete a pool, its tokens and their history. Returns how many leases `force` ended.

    Raises NotFound, Conflict (the `default` pool; leases or waiting tickets open and not `force`).
    """
    if name == DEFAULT_POOL:
        raise Conflict("The default pool cannot be deleted", details={"pool": name}, reason="default_pool")
    pool = get_pool(conn, name)
    _lock(conn, pool.id)
    queue.lock_queue(conn, pool.id)
    held = conn.execute(
        select(tokens.c.id, tokens.c.current_user_id, tokens.c.expires_at)
        .where(tokens.c.pool_id == pool.id)
        .with_for_update()
    ).all()
    at = resolve_now(conn, now)
    open_leases = sum(1 for r in held if r.current_user_id is not None and as_utc(r.expires_at) > at)
    waiting = queue.queued_counts(conn, [pool.id], at).get(pool.id, 0)
    if (open_leases or waiting) and not force:
        raise Conflict(
            "The pool has open leases or waiting tickets; delete with ?force=true to end them",
            details={"pool": name, "active": open_leases, "queued": waiting},
            reason="pool_in_use",
        )
    queue.cancel_waiting(conn, pool, at)
    cleared = clear_pool(conn, pool.id, now=at)
    conn.execute(delete(queue.tickets).where(queue.tickets.c.pool_id == pool.id))
    conn.execute(delete(tokens).where(tokens.c.pool_id == pool.id))
    conn.execute(delete(pools).where(pools.c.id == pool.id))
    return cleared


def _counts(conn: Connection, pool_ids: list[int], now: datetime | None) -> dict[int, dict]:
    """The counts of each pool (`reads.counts`) with its waiting tickets (`queued`)."""
    counts = reads.counts(conn, pool_ids, now)
    queued = queue.queued_counts(conn, pool_ids, _read_now(conn, now))
    return {pool_id: figures | {"queued": queued.get(pool_id, 0)} for pool_id, figures in counts.items()}


def _pool_object(row, counts: dict) -> dict:
    return {
        "name": row.name,
        "size": row.size,
        "lifetime_seconds": row.lifetime_seconds,
        "max_lifetime_seconds": row.max_lifetime_seconds,
        "policy": row.policy,
        "max_queue": row.max_queue,
        "max_wait_seconds": row.max_wait_seconds,
        "fencing_token": row.fencing_token,
        "created_at": row.created_at,
    } | counts[row.id]


def view(conn: Connection, name: str, *, now: datetime | None = None) -> dict:
    """One pool with its counts. Raises NotFound."""
    row = get_pool(conn, name)
    return _pool_object(row, _counts(conn, [row.id], now))


def list_pools(conn: Connection, *, limit: int, after: str | None = None, now: datetime | None = None):
    """Pools ordered by name after the keyset `after`, with counts; returns (pools, last name or None)."""
    query = select(pools).order_by(pools.c.name).limit(limit + 1)
    if after is not None:
        query = query.where(pools.c.name > after)
    rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    counts = _counts(conn, [r.id for r in rows], now) if rows else {}
    return [_pool_object(r, counts) for r in rows], (rows[-1].name if more else None)


def summaries(conn: Connection, *, now: datetime | None = None) -> dict[str, dict]:
    """Every pool's size, policy and counts by name (two statements): for /health and monitoring."""
    rows = conn.execute(select(pools).order_by(pools.c.name)).all()
    counts = _counts(conn, [r.id for r in rows], now) if rows else {}
    return {
        r.name: {"size": r.size, "policy": r.policy, "fencing_token": r.fencing_token} | counts[r.id]
        for r in rows
    }
