"""What each per-request feature costs target 2: `GET /api` / bare hello with one feature off at a time.

    .venv/bin/python bench/feature_cost.py [--rounds 3] [--duration 8]

Starts bare hello and one service instance per variant (all features on; the
access log off; metrics off; rate limits off; all three off), each on the same
gunicorn settings as `make bench` and the same database, and drives
`GET /hello` and `GET /api` with wrk in turn, alternating the order every
round. Prints each variant's median ratio to hello, i.e. what target 2 would
read without that feature. Not a target of its own: a map of where the rest
of the gap is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import run
from run import BENCH, Target, free_port, prepare_database, run_wrk, service_env

VARIANTS = {
    "all features on": {},
    "access log off": {"LOG_LEVEL": "WARNING"},
    "metrics off": {"METRICS_ENABLED": "false"},
    "rate limits off": {"ENABLE_RATE_LIMITING": "false"},
    "log, metrics, limits off": {
        "LOG_LEVEL": "WARNING",
        "METRICS_ENABLED": "false",
        "ENABLE_RATE_LIMITING": "false",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tokenpool-feature-cost-"))
    url = prepare_database("tokenpool_bench_features", 100, workdir)
    run.flush_redis()
    gunicorn = str(run.VENV_BIN / "gunicorn")
    port = free_port()
    bare = [gunicorn, "-c", str(BENCH / "gunicorn_bare.conf.py"), "-w", "2", "-k", "sync"]
    hello = [*bare, "-b", f"127.0.0.1:{port}", "bench.hello_app:app"]
    targets = {"hello": Target("hello", hello, dict(os.environ), port, "/hello", workdir)}
    for index, (name, changes) in enumerate(VARIANTS.items()):
        port = free_port()
        prom = workdir / f"prometheus-{index}"
        prom.mkdir()
        env = service_env(url, port, prom) | changes
        argv = [gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"]
        targets[name] = Target(f"svc-{index}", argv, env, port, "/api", workdir)
    try:
        for target in targets.values():
            target.wait_ready()
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for rnd in range(args.rounds):
            order = list(targets)
            order = order[rnd % len(order) :] + order[: rnd % len(order)]
            for name in order:
                path = "/hello" if name == "hello" else "/api"
                res = run_wrk(
                    targets[name].base + path,
                    "get.lua",
                    duration=args.duration,
                    connections=args.connections,
                    threads=1,
                )
                rates[name].append(res["rps"])
                print(f"round {rnd + 1}/{args.rounds} {name:28s} {res['rps']:8.0f} req/s", flush=True)
        hello_rate = statistics.median(rates["hello"])
        how = f"{args.rounds} rounds x {args.duration:.0f} s, wrk -t1 -c{args.connections}"
        print(f"\nGET /api / bare hello ({how}):")
        for name in VARIANTS:
            ratios = [a / h for a, h in zip(rates[name], rates["hello"], strict=True)]
            print(
                f"  {name:28s} {statistics.median(rates[name]):8.0f} req/s  "
                f"ratio {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(f"  {'bare hello':28s} {hello_rate:8.0f} req/s")
    finally:
        for target in targets.values():
            target.stop()
        run.admin_sql('DROP DATABASE IF EXISTS "tokenpool_bench_features" WITH (FORCE)')


if __name__ == "__main__":
    main()
