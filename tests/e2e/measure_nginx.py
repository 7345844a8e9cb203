#!/usr/bin/env python3
"""Requests per second for GET /api/tokens/summary: through nginx versus direct to gunicorn, with wrk.

By hand (needs the shared PostgreSQL on 127.0.0.1:5432, nginx, redis-server and wrk):

    .venv/bin/python tests/e2e/measure_nginx.py [--duration 5s] [--connections 8]

It starts the e2e stack (a new database, a throwaway Redis, two gunicorn instances with 2 sync
workers each, nginx rendered from nginx/templates), runs wrk three times and prints a table:

- direct:      wrk -> one gunicorn instance (2 workers)
- nginx -> 1:  wrk -> nginx -> that same instance (the cost of the proxy hop)
- nginx -> 2:  wrk -> nginx -> both instances (4 workers: what the deployment serves)

A measurement, not a test: the figures depend on the machine and its load. The e2e suite runs the
same thing (tests/e2e/test_e2e_measure.py) and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # run as a script: make `tests.` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.conftest import migrated_database  # noqa: E402
from tests.e2e.stack import WRK, Stack, wrk  # noqa: E402
from tests.web import request  # noqa: E402

PATH = "/api/tokens/summary"


def measure(stack: Stack, duration: str = "5s", connections: int = 8, threads: int = 1) -> list[dict]:
    """wrk against one instance directly, nginx in front of it alone, and nginx in front of both."""
    first = stack.gunicorns[0]
    only_first = stack.add_nginx("nginx-only-first", upstreams=[first])
    targets = [
        ("direct (1 instance, 2 workers)", first.url),
        ("nginx -> 1 instance (2 workers)", only_first.url),
        (f"nginx -> {len(stack.gunicorns)} instances ({2 * len(stack.gunicorns)} workers)", stack.nginx.url),
    ]
    results = []
    for label, base in targets:
        port = int(base.rsplit(":", 1)[1])
        assert request(port, "GET", PATH).status == 200  # warm: every worker's pool and caches
        result = wrk(base + PATH, threads=threads, connections=connections, duration=duration)
        result["label"] = label
        results.append(result)
    return results


def table(results: list[dict], connections: int, duration: str) -> str:
    lines = [
        f"GET {PATH}, wrk -t1 -c{connections} -d{duration}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        f"{'target':<36} {'req/s':>9} {'avg':>9} {'p50':>9} {'p99':>9} {'non-2xx':>8}",
    ]
    for r in results:
        rps = f"{r['rps']:.1f}" if r["rps"] is not None else "?"
        lines.append(
            f"{r['label']:<36} {rps:>9} {r.get('latency_avg', '?'):>9} {r.get('p50', '?'):>9}"
            f" {r.get('p99', '?'):>9} {r['non_2xx']:>8} {r['errors']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    if WRK is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    pool = 10
    with migrated_database(pool) as url, tempfile.TemporaryDirectory(prefix="tokenpool-measure-") as tmp:
        with Stack(Path(tmp), url, pool) as stack:
            results = measure(stack, args.duration, args.connections)
    print(table(results, args.connections, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
