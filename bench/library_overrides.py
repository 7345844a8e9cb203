"""What each remaining override of a library private saves: the same app with and without it.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/<migrated, seeded db> \
    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/library_overrides.py

Builds one app per variant in one process, production settings as
bench/inprocess.py (limits on Redis at a limit that never triggers), and
times the limiter's and Talisman's request hooks of each app around a
`GET /api` request context, less the same context without them: single
calls, every variant in turn, the 10th percentile of each (the calls no
other process interrupted, so a loaded machine shows through less).
Variants:

- `ours`: the service as it is;
- `limiter hooks removed`: Flask-Limiter's after-request and teardown hooks,
  which have nothing to do for our policy, taken off after `init_app`;
- `stock limiter (IP only)`: Flask-Limiter's own request check and limit
  registry instead of `PolicyLimiter`'s, with the per-IP limit alone and no
  headers (a lower bound: our policy adds per-key limits and headers);
- `talisman options cached`: `OnceTalisman` also caching Talisman's per-view
  options, which its redirect and nonce hooks ask for on every request;
- `stock talisman`: Flask-Talisman's public API only, `X-XSS-Protection: 0`
  in a hook of our own, instead of `OnceTalisman`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from inprocess import production_settings  # bench/ is this script's folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextmanager
def patched(owner, name: str, value):
    own = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, own)


def limiter_hooks_removed():
    """Flask-Limiter's after-request and teardown hooks taken off again (they do nothing for our policy)."""
    from flask_limiter import Limiter

    from service.ratelimit import PolicyLimiter

    def init_app(self, app):
        Limiter.init_app(self, app)
        after, teardown = app.after_request_funcs[None], app.teardown_request_funcs[None]
        after[:] = [f for f in after if getattr(f, "args", (None,))[0] is not self]
        teardown[:] = [f for f in teardown if getattr(f, "__self__", None) is not self]

    return patched(PolicyLimiter, "init_app", init_app)


def stock_limiter():
    """Flask-Limiter's own request check and limit registry, with one application limit per IP and
    no headers: less than our policy (no per-key limits), so a lower bound of what the registry costs."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from service import ratelimit

    class StockLimiter(Limiter):
        def __init__(self, config) -> None:
            limit = f"{config['RATE_LIMIT_PER_MINUTE']}/minute"
            super().__init__(get_remote_address, application_limits=[limit])
            self.auth_failures = ratelimit.AuthFailureBudget(config, self)

        def headers(self, response):
            return response

    return patched(ratelimit, "PolicyLimiter", StockLimiter)


def talisman_options_cached():
    """`OnceTalisman` also caching Talisman's per-view options (asked by its redirect and nonce hooks)."""
    from flask import request

    from service.response_headers import OnceTalisman

    def _get_local_options(self):
        cache = self.__dict__.setdefault("_options_of", {})
        options = cache.get(request.endpoint)
        if options is None:
            options = cache[request.endpoint] = super(OnceTalisman, self)._get_local_options()
        return options

    return patched(OnceTalisman, "_get_local_options", _get_local_options)


def stock_talisman():
    """Flask-Talisman through its public API only, `X-XSS-Protection: 0` in an after-request hook."""
    from flask_talisman import Talisman

    from service import response_headers

    def public(app, **options):
        Talisman(app, **options)

        @app.after_request
        def xss(response):
            response.headers["X-XSS-Protection"] = "0"
            return response

    return patched(response_headers, "OnceTalisman", public)


@contextmanager
def as_is():
    yield


VARIANTS = {
    "ours": as_is,
    "limiter hooks removed": limiter_hooks_removed,
    "stock limiter (IP only)": stock_limiter,
    "talisman options cached": talisman_options_cached,
    "stock talisman": stock_talisman,
}


LIBRARY_MODULES = (
    "flask_talisman",
    "flask_limiter",
    "service.authentication",
    "service.response_headers",
    "service.ratelimit",
)


def library_hooks(app) -> tuple[list, list, list]:
    """The app-wide before, after and teardown hooks of the limiter and of Talisman, ours included."""

    def ours(hook) -> bool:
        function = getattr(hook, "func", hook)  # a functools.partial's __module__ is "functools"
        return function.__module__.startswith(LIBRARY_MODULES)

    kinds = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    return tuple([hook for hook in kind.get(None, []) if ours(hook)] for kind in kinds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000, help="single calls per variant")
    args = parser.parse_args()
    production_settings("tokenpool-overrides-")
    from flask import g, request

    from service import create_app
    from service.route_table import route_table

    apps = {}
    for name, variant in VARIANTS.items():
        with variant():
            apps[name] = create_app()

    def request_with(app, hooks):
        before, after, teardown = hooks
        with app.test_request_context("/api", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
            g.route_class = route_table(app).of(request.blueprint)  # the observation's first hook's
            for hook in before:
                hook()
            response = app.response_class(b"{}", mimetype="application/json")
            for hook in reversed(after):
                response = hook(response)
            for hook in reversed(teardown):
                hook(None)

    # one call at a time, every variant in turn: all see the same machine, and the low
    # quantiles of single calls are the calls no other process interrupted
    calls = {}
    for name, app in apps.items():
        calls[(name, "hooks")] = functools.partial(request_with, app, library_hooks(app))
        calls[(name, "bare")] = functools.partial(request_with, app, ([], [], []))
    samples: dict = {key: [] for key in calls}
    clock = time.perf_counter_ns
    for _ in range(args.calls):
        for key, call in calls.items():
            started = clock()
            call()
            samples[key].append(clock() - started)

    def low(key) -> float:
        """The 10th percentile of the single calls, in microseconds."""
        return statistics.quantiles(samples[key], n=10)[0] / 1000

    results = {name: low((name, "hooks")) - low((name, "bare")) for name in apps}
    for name, cost in results.items():
        print(
            f"{name:24s} limiter and Talisman hooks per `GET /api`: {cost:5.1f} us "
            f"({cost - results['ours']:+5.1f} us against ours)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
