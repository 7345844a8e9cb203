"""The queue's hand-over delays on PostgreSQL: after an expiry (target p99 <= 1 s) and after a release
(target p99 <= 50 ms).

One production-configured gunicorn (bench/run.py's settings, 2 workers, the token manager on)
on a fresh database with a `queue` pool of 8 tokens and 2 s leases. Two phases of
`--seconds` each, `--clients` threads:

- expiry: each client activates a new user; queued clients poll their ticket; a
  granted lease is left to expire, so every hand-over waits for the token manager;
- release: each client holds its lease 20-100 ms and releases it, so tokens
  change hands in the releasing transaction.

The delays are read from the database afterwards: a granted ticket's lease start
minus the end of the token's lease before it (its `expires_at`, or the release).
Prints one JSON line.

    flock /tmp/tokenpool-bench.lock .venv/bin/python bench/handover.py [--seconds 20] [--clients 16]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (  # noqa: E402
    Target,
    admin_sql,
    database_dsn,
    flush_redis,
    free_port,
    prepare_database,
    service_env,
)
from tests.web import call  # noqa: E402

DATABASE = "tokenpool_bench_handover"
SIZE, LIFETIME = 8, 2
DELAYS = """
SELECT prev.end_reason, extract(epoch FROM k.activated_at - prev.ended_at)
  FROM tickets k JOIN LATERAL (
       SELECT u.ended_at, u.end_reason FROM token_usages u
        WHERE u.token_id = k.token_id AND u.started_at < k.activated_at
        ORDER BY u.started_at DESC LIMIT 1) prev ON true
 WHERE k.status = 'granted'
"""


def _client(base: str, phase: str, deadline: float, seed: int, releases: list) -> None:
    rnd = random.Random(seed)
    while time.monotonic() < deadline:
        user = str(uuid.uuid4())
        status, body = call(base, "POST", f"/api/pools/{phase}/tokens/activate", {"user_id": user})
        if status == 202:
            url = f"/api/pools/{phase}/tickets/{body['ticket_id']}?user_id={user}"
            while body.get("status") == "waiting" and time.monotonic() < deadline + 5:
                time.sleep(0.05)
                status, body = call(base, "GET", url)
            if body.get("status") != "granted":
                continue
        elif status != 200:
            raise RuntimeError(f"activation answered {status}: {body}")
        if phase == "release":
            time.sleep(rnd.uniform(0.02, 0.1))
            proof = {"user_id": user, "lease_id": body["lease_id"]}
            started = time.perf_counter()
            call(base, "POST", f"/api/pools/{phase}/tokens/{body['token_id']}/release", proof)
            releases.append(time.perf_counter() - started)


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)

    return {"n": len(values), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(values[-1] * 1000, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tokenpool-bench-handover-"))
    url = prepare_database(DATABASE, 10, workdir)
    for name in ("expiry", "release"):
        admin_sql(
            "INSERT INTO pools (name, size, lifetime_seconds, policy, max_queue, max_wait_seconds,"
            f" fencing_token, created_at) VALUES ('{name}', {SIZE}, {LIFETIME}, 'queue', 100000, 600, 0,"
            " now())",
            dbname=DATABASE,
        )
    admin_sql(
        "INSERT INTO tokens (id, pool_id, expires_at, created_at) SELECT gen_random_uuid(), p.id, 'epoch',"
        " now() FROM pools p, generate_series(1, p.size) WHERE p.name <> 'default'",
        dbname=DATABASE,
    )
    flush_redis()
    port = free_port()
    prom = workdir / "prometheus"
    prom.mkdir()
    target = Target(
        "svc-queue",
        [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        service_env(url, port, prom),
        port,
        "/health/ready",
        workdir,
    )
    result = {"clients": args.clients, "seconds": args.seconds, "pool_size": SIZE, "lifetime_s": LIFETIME}
    releases: list[float] = []
    try:
        target.wait_ready()
        for phase in ("expiry", "release"):
            deadline = time.monotonic() + args.seconds
            threads = [
                threading.Thread(
                    target=_client, args=(target.base, phase, deadline, i, releases), daemon=True
                )
                for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.seconds + 60)
    finally:
        target.stop()
    with psycopg.connect(database_dsn(DATABASE)) as conn:
        delays = conn.execute(DELAYS).fetchall()
        counts = dict(conn.execute("SELECT status, count(*) FROM tickets GROUP BY status").fetchall())
    admin_sql(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    result["tickets"] = counts
    result["hand_over_after_expiry"] = percentiles([float(d) for r, d in delays if r == "expired"])
    result["hand_over_after_release"] = percentiles([float(d) for r, d in delays if r == "released"])
    result["release_request"] = percentiles(releases)
    result["targets"] = {
        "expiry_p99_le_1s": result["hand_over_after_expiry"].get("p99_ms", 1e9) <= 1000,
        "release_p99_le_50ms": result["hand_over_after_release"].get("p99_ms", 1e9) <= 50,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
