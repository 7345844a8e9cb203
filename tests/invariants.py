"""SQL checks of the pool's invariants (docs/API.md, section 1), run against the database itself."""

from __future__ import annotations

from sqlalchemy import text

CHECKS = {
    "a token has at most one open usage": """
        SELECT token_id FROM token_usages WHERE ended_at IS NULL
        GROUP BY token_id HAVING count(*) > 1""",
    "a user holds at most one token per pool": """
        SELECT current_user_id FROM tokens WHERE current_user_id IS NOT NULL
        GROUP BY pool_id, current_user_id HAVING count(*) > 1""",
    "every held token has exactly its holder's open usage": """
        SELECT t.id FROM tokens t
        LEFT JOIN token_usages u ON u.token_id = t.id AND u.ended_at IS NULL
        WHERE t.current_user_id IS NOT NULL
          AND (u.id IS NULL OR u.user_id <> t.current_user_id OR u.started_at <> t.activated_at)""",
    "a held token's lease_id is its open usage's": """
        SELECT t.id FROM tokens t
        JOIN token_usages u ON u.token_id = t.id AND u.ended_at IS NULL
        WHERE t.current_user_id IS NOT NULL AND (t.lease_id IS NULL OR u.lease_id <> t.lease_id)""",
    "a free token has no open usage": """
        SELECT t.id FROM tokens t JOIN token_usages u ON u.token_id = t.id AND u.ended_at IS NULL
        WHERE t.current_user_id IS NULL""",
    "a held token's fencing token is its open usage's": """
        SELECT t.id FROM tokens t
        JOIN token_usages u ON u.token_id = t.id AND u.ended_at IS NULL
        WHERE t.current_user_id IS NOT NULL
          AND (t.fencing_token IS NULL OR u.fencing_token <> t.fencing_token)""",
    "a fencing token is granted once per pool, and never above the pool's counter": """
        SELECT u.fencing_token FROM token_usages u JOIN tokens t ON t.id = u.token_id
        JOIN pools p ON p.id = t.pool_id
        WHERE u.fencing_token IS NOT NULL
        GROUP BY t.pool_id, u.fencing_token
        HAVING count(*) > 1 OR max(u.fencing_token) > max(p.fencing_token)""",
    "within a pool, a lease that starts later has a greater fencing token": """
        SELECT id FROM (
            SELECT u.id, u.started_at, u.fencing_token,
                   max(u.fencing_token) OVER (PARTITION BY t.pool_id ORDER BY u.started_at
                       RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS before
              FROM token_usages u JOIN tokens t ON t.id = u.token_id
             WHERE u.fencing_token IS NOT NULL) x
        WHERE x.fencing_token <= x.before""",
    "no lease started on a retired token": """
        SELECT t.id FROM tokens t JOIN token_usages u ON u.token_id = t.id
        WHERE t.retired_at IS NOT NULL AND u.started_at > t.retired_at""",
    "a pool holds no more tokens than its size, and its total counts them": """
        SELECT p.name FROM pools p LEFT JOIN tokens t ON t.pool_id = p.id AND t.retired_at IS NULL
        GROUP BY p.id, p.name, p.size, p.total HAVING count(t.id) > p.size OR count(t.id) <> p.total""",
    "leases of one token never overlap": """
        SELECT a.id FROM token_usages a JOIN token_usages b
          ON a.token_id = b.token_id AND a.id < b.id
        WHERE a.ended_at IS NULL OR a.ended_at > b.started_at""",
}


def violations(conn) -> dict[str, list]:
    """Each broken invariant with the offending ids; empty when all hold."""
    found = {}
    for name, sql in CHECKS.items():
        rows = conn.execute(text(sql)).fetchall()
        if rows:
            found[name] = [r[0] for r in rows[:10]]
    return found


def assert_invariants(conn, pool_size: int, pool_id: int = 1) -> None:
    """Every invariant holds, and the pool `pool_id` (default: `default`) holds at most `pool_size` leases."""
    assert violations(conn) == {}
    held = conn.execute(
        text("SELECT count(*) FROM tokens WHERE current_user_id IS NOT NULL AND pool_id = :pool"),
        {"pool": pool_id},
    ).scalar()
    assert held <= pool_size
