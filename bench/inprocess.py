"""CPU per request inside the worker: the WSGI app called in a loop, no network, no gunicorn.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/<migrated, seeded db> \
    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/inprocess.py activate

The target is one of activate, summary, api, healthz, stream (a short event-stream
answer), hello or raw.

Production settings (JSON logs to /dev/null, metrics in multiprocess mode,
limits on Redis at a limit that never triggers, sweeper off). Prints the
minimum and the median over 7 batches: this VM's speed varies by 10-15 %
between runs, so compare the minimums of runs made one after the other.
`raw` is bench/raw_app.py on the same database, `hello` bench/hello_app.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUTES = {
    "activate": ("POST", "/api/tokens/activate"),
    "summary": ("GET", "/api/tokens/summary"),
    "api": ("GET", "/api"),
    "healthz": ("GET", "/healthz"),
    "hello": ("GET", "/hello"),
    "stream": ("GET", "/api/events/stream?after=0"),  # a short stream answer (sync workers' default)
    "raw": ("POST", "/activate"),
}


def load_app(target: str):
    if target in ("hello", "raw"):
        sys.path.insert(0, str(ROOT / "bench"))
        os.environ["DATABASE_URL"] = os.environ["DATABASE_URL"].replace("+psycopg", "")
        module = __import__("hello_app" if target == "hello" else "raw_app")
        return module.app
    sys.path.insert(0, str(ROOT))
    from wsgi import app

    return app


def production_settings(prefix: str) -> None:
    """Settings of a production worker (JSON logs, limits and metrics on, no sweeper), with a
    fresh multiprocess metrics folder named `prefix...`; the apps' log lines go to /dev/null."""
    os.environ.update(
        {
            "APP_ENV": "production",
            "SECRET_KEY": "bench-" + "x" * 40,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "RATE_LIMIT_PER_MINUTE": "100000000",
            "ENABLE_RATE_LIMITING": "true",
            "METRICS_ENABLED": "true",
            "SWEEPER_ENABLED": "false",
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix=prefix),
        }
    )
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", choices=sorted(ROUTES))
    parser.add_argument("--requests", type=int, default=7000)
    args = parser.parse_args()
    production_settings("tokenpool-inprocess-")
    from werkzeug.test import EnvironBuilder

    app = load_app(args.target)
    method, path = ROUTES[args.target]

    def environ() -> dict:
        body = {"data": json.dumps({"user_id": str(uuid.uuid4())}), "content_type": "application/json"}
        kwargs = body if method == "POST" else {}
        client = {"REMOTE_ADDR": "127.0.0.1"}
        return EnvironBuilder(path=path, method=method, environ_base=client, **kwargs).get_environ()

    def call() -> str:
        status = []
        body = app(environ(), lambda s, h, exc=None: status.append(s))
        b"".join(body)
        getattr(body, "close", lambda: None)()
        return status[0]

    for _ in range(300):
        status = call()
    started = time.process_time()
    for _ in range(args.requests):
        environ()
    building = (time.process_time() - started) / args.requests  # subtracted below
    batch = max(1, args.requests // 7)
    cpu = []
    for _ in range(7):
        started = time.process_time()
        for _ in range(batch):
            call()
        cpu.append((time.process_time() - started) / batch - building)
    cpu.sort()
    print(
        f"{args.target:9s} {method} {path}: {status}; CPU per request min {cpu[0] * 1e6:.0f} us, "
        f"median {cpu[3] * 1e6:.0f} us",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
