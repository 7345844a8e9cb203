"""How long migration 0007 (pools) takes on a running deployment's data, on PostgreSQL.

Builds a database at revision 0006 holding 100 tokens, 90 of them leased, and
`--usages` ended usages (default 1,000,000) spread over the tokens, runs
`VACUUM ANALYZE`, then times the upgrade to 0007 and the downgrade back, and
checks that no lease was lost or changed. Prints one JSON line.

    .venv/bin/python bench/migrate_pools.py [--usages N]

Uses the PostgreSQL at BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres)
and drops its database at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LEASES = "SELECT token_id, user_id, started_at, lease_id FROM token_usages WHERE ended_at IS NULL ORDER BY 1"


def fill(url: str, usages: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tokens (id, expires_at, created_at) "
            "SELECT gen_random_uuid(), now() - interval '1 hour', now() FROM generate_series(1, 100)"
        )
        conn.execute(
            "INSERT INTO token_usages (token_id, user_id, started_at, ended_at, end_reason) "
            "SELECT t.ids[1 + g %% 100], gen_random_uuid(), now() - interval '2 days' + g * interval '1 ms',"
            " now() - interval '2 days' + g * interval '1 ms' + interval '1 second', 'released'"
            " FROM generate_series(1, %s) g, (SELECT array_agg(id) AS ids FROM tokens) t",
            (usages,),
        )
        conn.execute(
            "WITH held AS (SELECT id, gen_random_uuid() AS u, gen_random_uuid() AS l FROM tokens LIMIT 90)"
            " , t AS (UPDATE tokens SET current_user_id = held.u, lease_id = held.l, activated_at = now(),"
            " expires_at = now() + interval '2 minutes' FROM held WHERE tokens.id = held.id RETURNING held.*)"
            " INSERT INTO token_usages (token_id, user_id, started_at, lease_id)"
            " SELECT id, u, now(), l FROM t"
        )
        conn.execute("VACUUM ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usages", type=int, default=1_000_000)
    args = parser.parse_args()

    from flask_migrate import downgrade, upgrade

    from service import create_app

    name = f"tokenpool_migrate_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        app = create_app(
            {
                "APP_ENV": "testing",
                "TESTING": True,
                "SQLALCHEMY_DATABASE_URI": url.replace("postgresql://", "postgresql+psycopg://", 1),
                "SWEEPER_ENABLED": False,
                "LOG_LEVEL": "WARNING",
            }
        )
        with app.app_context():
            upgrade(revision="0006")
            fill(url, args.usages)
            with psycopg.connect(url) as conn:
                before = conn.execute(LEASES).fetchall()
            start = time.perf_counter()
            upgrade(revision="0007")
            up = time.perf_counter() - start
            with psycopg.connect(url) as conn:
                after = conn.execute(LEASES).fetchall()
                fenced = conn.execute(
                    "SELECT count(*) FROM token_usages WHERE ended_at IS NULL AND fencing_token IS NOT NULL"
                ).fetchone()[0]
                total = conn.execute("SELECT count(*) FROM token_usages").fetchone()[0]
            start = time.perf_counter()
            downgrade(revision="0006")
            down = time.perf_counter() - start
            from service.extensions import db

            db.engine.dispose()
        print(
            json.dumps(
                {
                    "usages": total,
                    "open_leases": len(before),
                    "leases_unchanged": before == after,
                    "open_leases_fenced": fenced,
                    "upgrade_seconds": round(up, 2),
                    "downgrade_seconds": round(down, 2),
                }
            )
        )
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
