"""Retention at scale: activations beside 10 million usage rows, and while a prune deletes them.

    flock /tmp/tokenpool-bench.lock .venv/bin/python bench/retention.py [--rows 10000000]

Builds a fresh database (migrated, 100 tokens), then measures activation
(`tokenpool_activate`, the service's one statement, from 8 threads with their
own connections) in three phases of `--seconds` each:

  empty     no usage history
  history   `--rows` ended usages (generated with SQL, older than the retention)
  pruning   the same while `retention.prune` deletes them, 2,000 rows per transaction

and prints rates, latency percentiles and the longest activation of each
phase, the lock waits of activations (sampled every 5 ms from pg_stat_activity,
and how many were behind a backend that is not an activation: the prune),
plus the prune's batches and its longest batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import PG_ADMIN_URL, admin_sql, log, prepare_database  # noqa: E402

ACTIVATE = "SELECT token_id FROM tokenpool_activate(%s, NULL, make_interval(secs => 120))"
APP_NAME = "bench-activate"
# activations waiting on a lock, and those whose blockers include a backend that is not an
# activation (the prune): sampled every 5 ms
WAITS = (
    "SELECT count(*), count(*) FILTER (WHERE EXISTS ("
    " SELECT 1 FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid))"
    " AND b.application_name <> %(app)s))"
    " FROM pg_stat_activity a WHERE a.application_name = %(app)s AND a.wait_event_type = 'Lock'"
)


def activations(url: str, seconds: float, threads: int = 8) -> dict:
    """Activate new users from `threads` connections for `seconds`; latencies in ms."""
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def work(out: list[float]) -> None:
        with psycopg.connect(url, autocommit=True, application_name=APP_NAME) as conn:
            while time.monotonic() < stop:
                started = time.perf_counter()
                conn.execute(ACTIVATE, (uuid.uuid4(),)).fetchone()
                out.append((time.perf_counter() - started) * 1000)

    waits = {"samples": 0, "waiting": 0, "on_others": 0}

    def sample() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < stop:
                waiting, on_others = conn.execute(WAITS, {"app": APP_NAME}).fetchone()
                waits["samples"] += 1
                waits["waiting"] += waiting
                waits["on_others"] += on_others
                time.sleep(0.005)

    workers = [threading.Thread(target=work, args=(out,)) for out in latencies]
    workers.append(threading.Thread(target=sample))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flat = sorted(x for out in latencies for x in out)
    return waits | {
        "rate": len(flat) / seconds,
        "p50": statistics.median(flat),
        "p99": flat[int(len(flat) * 0.99)],
        "max": flat[-1],
    }


def start_over(url: str) -> None:
    """No lease and no history, ids from 1 again: the history written next is older than any
    lease after it, in id order too, as rows are written in this service."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE token_usages, events RESTART IDENTITY")
        conn.execute(
            "UPDATE tokens SET current_user_id = NULL, lease_id = NULL, fencing_token = NULL,"
            " expires_at = '1970-01-01', released_at = NULL, activated_at = NULL, usage_count = 0"
        )


def fill_history(url: str, rows: int) -> None:
    """`rows` ended usages spread over the pool's tokens, a year old (triggers off: no events)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        step = 1_000_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            conn.execute(
                "INSERT INTO token_usages (token_id, user_id, started_at, ended_at, end_reason, lease_id)"
                " SELECT t.id, gen_random_uuid(), now() - interval '400 days' + g * interval '1 ms',"
                " now() - interval '400 days' + g * interval '1 ms' + interval '1 minute', 'released',"
                " gen_random_uuid()"
                " FROM generate_series(1, %s) g"
                " JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM tokens) t"
                " ON t.k = g %% (SELECT count(*) FROM tokens)",
                (n,),
            )
            log(f"history: {start + n:,} / {rows:,} rows")
        conn.execute("UPDATE tokens SET usage_count = usage_count + sub.n FROM"
                     " (SELECT token_id, count(*) n FROM token_usages GROUP BY token_id) sub"
                     " WHERE tokens.id = sub.token_id")  # fmt: skip
        conn.execute("VACUUM ANALYZE token_usages")
        conn.execute("CHECKPOINT")


def prune_in_background(sqlalchemy_url: str, result: dict) -> threading.Thread:
    """Run the service's prune (USAGE_RETENTION_DAYS=90) in a thread; records batch times."""

    def work() -> None:
        from service import create_app, retention

        app = create_app(
            {"SQLALCHEMY_DATABASE_URI": sqlalchemy_url, "SWEEPER_ENABLED": False, "LOG_LEVEL": "WARNING"}
        )
        times: list[float] = []
        started = time.monotonic()
        with app.app_context():
            cut = retention.cutoffs(app.config, retention.clock_now(app))

            def timed_batch(table: str, count: int) -> None:
                times.append(time.monotonic())

            total = retention.prune(cut, on_batch=timed_batch)
        gaps = [b - a for a, b in zip([started, *times], times, strict=False)]
        result.update(
            deleted=total["usages"],
            seconds=time.monotonic() - started,
            batches=len(times),
            longest_batch_ms=max(gaps) * 1000 if gaps else 0.0,
            median_batch_ms=statistics.median(gaps) * 1000 if gaps else 0.0,
        )

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    name = "tokenpool_bench_retention"
    import tempfile

    sqlalchemy_url = prepare_database(name, 100, Path(tempfile.mkdtemp(prefix="tokenpool-retention-")))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        phases = {"empty": activations(url, args.seconds)}
        log(f"empty: {phases['empty']}")
        start_over(url)
        fill_history(url, args.rows)
        phases["history"] = activations(url, args.seconds)
        log(f"history: {phases['history']}")
        prune: dict = {}
        thread = prune_in_background(sqlalchemy_url, prune)
        time.sleep(1)
        phases["pruning"] = activations(url, args.seconds)
        log(f"pruning: {phases['pruning']}")
        thread.join()
        print()
        print(f"Activation ({args.rows:,} usage rows; 8 connections, {args.seconds:g} s per phase)")
        print(
            f"  {'phase':8s} {'per s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}"
            "  lock waits seen (samples; of them behind a non-activation)"
        )
        for phase, r in phases.items():
            print(
                f"  {phase:8s} {r['rate']:8.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['max']:8.2f}"
                f"  {r['waiting']} in {r['samples']} samples; {r['on_others']} behind another backend"
            )
        print(
            f"Prune: {prune.get('deleted', 0):,} rows in {prune.get('seconds', 0):.1f} s,"
            f" {prune.get('batches', 0)} batches, median {prune.get('median_batch_ms', 0):.1f} ms,"
            f" longest {prune.get('longest_batch_ms', 0):.1f} ms"
        )
        return 0
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
