"""Reading a pool: one token, a page of tokens, the counts, a token's usages; a user's leases.

Each read is one statement built once at import; only its parameters change
per request. `now` as in service.py: the caller's clock, or None for the
database's own on PostgreSQL. A lease's `lease_id` is its holder's secret:
the reads add it only when the caller asks (`lease_ids=True`, for admin keys).
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import BindParameter, Connection, DateTime, bindparam, case, func, select, true

from ..db import is_postgres
from ..errors import NotFound
from ..models import DEFAULT_POOL_ID, Pool, Token, TokenUsage
from ..timeutil import as_utc, utcnow

tokens = Token.__table__
usages = TokenUsage.__table__
pools = Pool.__table__


def _active(at):
    """SQL condition: the token is leased and its lease has not ended at the SQL time `at`."""
    return tokens.c.current_user_id.is_not(None) & (tokens.c.expires_at > at)


def token_view(row, now: datetime, *, lease_ids: bool = False) -> dict:
    """A token row as the API's token object (times still as datetimes).

    With `lease_ids`, an active token also shows its lease's `lease_id`.
    """
    active = row.current_user_id is not None and as_utc(row.expires_at) > now
    leased = row.activated_at is not None
    view = {
        "token_id": row.id,
        "state": "active" if active else "available",
        "current_user_id": row.current_user_id if active else None,
        "activated_at": as_utc(row.activated_at),
        "expires_at": as_utc(row.expires_at) if leased else None,
        "released_at": as_utc(row.released_at),
    }
    if active:
        view["fencing_token"] = row.fencing_token
        if lease_ids:
            view["lease_id"] = row.lease_id
    if row.retired_at is not None:  # shrunk away: its running lease ends as planned, then no other
        view["retired_at"] = as_utc(row.retired_at)
    return view


# Read statements are built once: per request only the parameters change, so
# SQLAlchemy neither rebuilds nor re-keys them (measured: ~0.3 ms per request).
_NOW = bindparam("now", type_=DateTime(timezone=True))
READ_AT = func.coalesce(_NOW, func.now())  # the caller's clock, else the database's
_IN_POOL = tokens.c.pool_id == bindparam("pool_id")
GET_TOKEN = select(tokens, READ_AT.label("now")).where(tokens.c.id == bindparam("token_id"), _IN_POOL)
# `total` counts the tokens that are not retired: the pool row's counter, kept by the
# database's triggers (migration 0007), not a count of the table, whose other pools may
# hold a million tokens. `active` counts every running lease (a retired token's too,
# until it ends), through the index of held tokens by pool.
_HELD = (
    select(func.count().label("active"), func.count(tokens.c.retired_at).label("retiring"))
    .where(_IN_POOL, _active(READ_AT))
    .subquery()
)
SUMMARY = (
    select(pools.c.total, _HELD.c.active, _HELD.c.retiring)
    .select_from(pools.join(_HELD, true()))  # one row and one row
    .where(pools.c.id == bindparam("pool_id"))
)
_POOL_IDS: BindParameter[list[int]] = bindparam("pool_ids", expanding=True)
_HELD_BY_POOL = (
    select(tokens.c.pool_id, func.count().label("active"), func.count(tokens.c.retired_at).label("retiring"))
    .where(tokens.c.pool_id.in_(_POOL_IDS), _active(READ_AT))
    .group_by(tokens.c.pool_id)
    .subquery()
)
COUNTS = (
    select(
        pools.c.id,
        pools.c.total,
        func.coalesce(_HELD_BY_POOL.c.active, 0),
        func.coalesce(_HELD_BY_POOL.c.retiring, 0),
    )
    .select_from(pools.outerjoin(_HELD_BY_POOL, _HELD_BY_POOL.c.pool_id == pools.c.id))
    .where(pools.c.id.in_(_POOL_IDS))
)


@functools.cache
def _list_statement(state: str, keyed: bool):
    query = (
        select(tokens, READ_AT.label("now"))
        .where(_IN_POOL, tokens.c.retired_at.is_(None) | _active(READ_AT))
        .order_by(tokens.c.id)
        .limit(bindparam("limit"))
    )
    if state == "active":
        query = query.where(_active(READ_AT))
    elif state == "available":
        query = query.where(~_active(READ_AT))
    if keyed:
        query = query.where(tokens.c.id > bindparam("after"))
    return query


def _read_now(conn: Connection, now: datetime | None) -> datetime | None:
    """The `now` parameter of a read: the caller's clock; None lets PostgreSQL use its own."""
    if now is not None:
        return as_utc(now)
    return None if is_postgres(conn) else utcnow()


def get_token(
    conn: Connection,
    token_id,
    *,
    pool_id: int = DEFAULT_POOL_ID,
    now: datetime | None = None,
    lease_ids: bool = False,
) -> dict:
    """One token of the pool with its `usage_count` (its leases of all time: a column, not a
    count of its history), in one statement. Raises NotFound."""
    params = {"token_id": token_id, "pool_id": pool_id, "now": _read_now(conn, now)}
    row = conn.execute(GET_TOKEN, params).one_or_none()
    if row is None:
        raise NotFound("Token not found", details={"token_id": str(token_id)}, reason="token_not_found")
    return token_view(row, as_utc(row.now), lease_ids=lease_ids) | {"usage_count": row.usage_count}


def list_tokens(
    conn: Connection,
    *,
    pool_id: int = DEFAULT_POOL_ID,
    state: str,
    limit: int,
    after=None,
    now: datetime | None = None,
    lease_ids: bool = False,
):
    """The pool's tokens (retired ones only while their lease runs) ordered by id after the
    keyset `after`, in one statement; returns (tokens, last id or None)."""
    params = {"pool_id": pool_id, "now": _read_now(conn, now), "limit": limit + 1, "after": after}
    rows = conn.execute(_list_statement(state, after is not None), params).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [token_view(r, as_utc(r.now), lease_ids=lease_ids) for r in rows], (rows[-1].id if more else None)


def _figures(total: int, active: int, retiring: int) -> dict:
    """A pool's counts from its tokens not retired (`total`), its running leases (`active`)
    and those of them on retired tokens (`retiring`): `available` = tokens not retired and
    free, `utilization` = active / total (above 1 while retired tokens' leases run)."""
    total, active, retiring = int(total), int(active), int(retiring)
    return {
        "total": total,
        "active": active,
        "available": total - (active - retiring),
        "utilization": round(active / total, 4) if total else 0.0,
    }


def summary(conn: Connection, *, pool_id: int = DEFAULT_POOL_ID, now: datetime | None = None) -> dict:
    """One pool's counts (one statement): `{total, active, available, utilization}`."""
    return _figures(*conn.execute(SUMMARY, {"pool_id": pool_id, "now": _read_now(conn, now)}).one())


def counts(conn: Connection, pool_ids: list[int], now: datetime | None = None) -> dict[int, dict]:
    """The counts of `summary` for each of these pools (one statement), by pool id."""
    rows = conn.execute(COUNTS, {"pool_ids": pool_ids, "now": _read_now(conn, now)})
    return {pool_id: _figures(*row) for pool_id, *row in rows}


def list_usages(
    conn: Connection,
    token_id,
    *,
    pool_id: int = DEFAULT_POOL_ID,
    limit: int,
    before=None,
    lease_ids: bool = False,
):
    """A token's leases, newest first; returns (usages, last id or None). Raises NotFound.

    With `lease_ids`, each usage also shows its lease's `lease_id` (null for
    leases that ended before lease ids existed).
    """
    if conn.scalar(select(tokens.c.id).where(tokens.c.id == token_id, tokens.c.pool_id == pool_id)) is None:
        raise NotFound("Token not found", details={"token_id": str(token_id)}, reason="token_not_found")
    query = select(usages).where(usages.c.token_id == token_id).order_by(usages.c.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(usages.c.id < before)
    rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "usage_id": r.id,
            "user_id": r.user_id,
            "started_at": as_utc(r.started_at),
            "ended_at": as_utc(r.ended_at),
            "end_reason": r.end_reason,
            "fencing_token": r.fencing_token,
        }
        | ({"lease_id": r.lease_id} if lease_ids else {})
        for r in rows
    ]
    return items, (rows[-1].id if more else None)


def list_user_leases(conn: Connection, user_id, *, active_only: bool, limit: int, before=None, now=None):
    """A user's leases in every pool, newest first; returns (leases, last usage id or None).

    Each lease: pool, token_id, fencing_token, started_at, expires_at (the
    token's while the lease runs), ended_at and end_reason (null while it runs).
    """
    running = usages.c.ended_at.is_(None)
    query = (
        select(
            usages.c.id,
            pools.c.name,
            usages.c.token_id,
            usages.c.fencing_token,
            usages.c.started_at,
            usages.c.ended_at,
            usages.c.end_reason,
            case((running, tokens.c.expires_at), else_=None).label("expires_at"),
            READ_AT.label("now"),
        )
        .join(tokens, tokens.c.id == usages.c.token_id)
        .join(pools, pools.c.id == tokens.c.pool_id)
        .where(usages.c.user_id == user_id)
        .order_by(usages.c.id.desc())
        .limit(limit + 1)
    )
    if active_only:
        query = query.where(running, tokens.c.expires_at > READ_AT)
    if before is not None:
        query = query.where(usages.c.id < before)
    rows = conn.execute(query, {"now": _read_now(conn, now)}).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = []
    for r in rows:
        lease = {
            "pool": r.name,
            "token_id": r.token_id,
            "fencing_token": r.fencing_token,
            "started_at": as_utc(r.started_at),
            "expires_at": as_utc(r.expires_at),
            "ended_at": as_utc(r.ended_at),
            "end_reason": r.end_reason,
        }
        # an open usage past its end is an expiry the sweeper has not closed yet
        if r.ended_at is None and as_utc(r.expires_at) <= as_utc(r.now):
            lease |= {"ended_at": lease["expires_at"], "end_reason": "expired"}
        items.append(lease)
    return items, (rows[-1].id if more else None)
