"""SQL checks of the pool's invariants (docs/API.md, section 1), run against the database itself."""

from __future__ import annotations

from sqlalchemy import text

CHECKS = {
    "a token has at most one open usage": """
        SELECT token_id FROM token_usages WHERE ended_at IS NULL
        GROUP BY token_id HAVING count(*) > 1""",
    "a user holds at most one token": """
        SELECT current_user_id FROM tokens WHERE current_user_id IS NOT NULL
        GROUP BY current_user_id HAVING count(*) > 1""",
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


def assert_invariants(conn, pool_size: int) -> None:
    assert violations(conn) == {}
    held = conn.execute(text("SELECT count(*) FROM tokens WHERE current_user_id IS NOT NULL")).scalar()
    assert held <= pool_size
