"""Tripwires for the library private names the service overrides or reads.

`OnceTalisman` (service/response_headers.py) overrides Flask-Talisman's private
after-request hook and its two before-request hooks; `PolicyLimiter`
(service/ratelimit.py) replaces Flask-Limiter's private request check, drives
its in-memory fallback switch and answers its per-request `context`;
`ScrapeExporter` (service/metrics/endpoint.py) overrides
prometheus-flask-exporter's `generate_metrics`, which its /metrics view must
call; `metrics_storage` extends prometheus_client's memory-mapped files;
`db.pool_limit` reads SQLAlchemy's pool overflow; `drain` drives gunicorn's
worker loop; `StreamingSyncWorker` (service/gunicorn_worker.py) overrides the
sync worker's `handle_request`; `add_checked` (service/response_headers.py) appends to werkzeug's
`Headers._list`. Each test here fails on the day an upgrade renames or changes
what they rely on, instead of the override silently stopping to apply.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path

import flask_limiter
import pytest
from flask import Flask, g, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_talisman import Talisman

from service.app import App
from service.ratelimit import PolicyLimiter
from service.response_headers import OnceTalisman, add_checked, talisman_options
from service.route_table import API


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


# --- Flask-Talisman -------------------------------------------------------------------------


def test_talisman_after_request_hook_is_the_private_method_we_override():
    assert params(Talisman._set_response_headers) == ["self", "response"]
    app = Flask(__name__)
    talisman = OnceTalisman(app, **talisman_options({"HSTS_MAX_AGE": 60, "FORCE_HTTPS": False}))
    assert talisman._set_response_headers in app.after_request_funcs[None]  # ours, bound
    assert "content_security_policy_nonce_in" in params(Talisman.init_app)


def test_talisman_before_request_hooks_are_the_private_methods_we_override():
    # OnceTalisman keeps, per endpoint, whether these find work; read them again if they change
    digests = {
        name: hashlib.sha256(inspect.getsource(getattr(Talisman, name)).encode()).hexdigest()[:16]
        for name in ("_force_https", "_make_nonce", "_get_local_options")
    }
    assert digests == {
        "_force_https": "262f9739319e0a07",
        "_make_nonce": "855c316a130549f0",
        "_get_local_options": "2ca48cc1f86c43d1",
    }
    app = Flask(__name__)
    talisman = OnceTalisman(app, **talisman_options({"HSTS_MAX_AGE": 60, "FORCE_HTTPS": False}))
    hooks = app.before_request_funcs[None]
    assert talisman._force_https in hooks and talisman._make_nonce in hooks


def test_once_talisman_makes_a_nonce_where_talisman_does():
    def nonce_app(cls) -> Flask:
        app = Flask(__name__)

        @app.get("/plain")
        def plain():
            return str(bool(getattr(request, "csp_nonce", None)))

        @app.get("/scripted")
        def scripted():
            return str(bool(getattr(request, "csp_nonce", None)))

        scripted.talisman_view_options = {"content_security_policy_nonce_in": ["default-src"]}
        cls(app, **talisman_options({"HSTS_MAX_AGE": 60, "FORCE_HTTPS": False}))
        return app

    for cls in (OnceTalisman, Talisman):
        client = nonce_app(cls).test_client()
        for _ in range(2):
            assert client.get("/plain").text == "False" and client.get("/scripted").text == "True", cls


def headers_app(cls) -> Flask:
    """A bare app with a few endpoints (one with its own Talisman options, one raising 404) under `cls`."""
    app = Flask(__name__)

    @app.get("/a")
    def a():
        return jsonify(ok=True)

    @app.post("/b/<int:n>")
    def b(n):
        return jsonify(n=n), 201

    @app.get("/framed")
    def framed():
        return "ok"

    framed.talisman_view_options = {"frame_options": "SAMEORIGIN"}  # Talisman's per-view options

    @app.get("/forced")
    def forced():
        return "ok"

    forced.talisman_view_options = {"force_https": True}  # Talisman redirects this one itself

    @app.get("/own")
    def own():  # headers of its own, which Talisman replaces (the first one kept in place)
        return "ok", 200, [("x-frame-options", "SAMEORIGIN"), ("X-Extra", "1"), ("X-Frame-Options", "ALLOW")]

    cls(app, **talisman_options({"HSTS_MAX_AGE": 31536000, "FORCE_HTTPS": True}))
    return app


REQUESTS = [
    ("GET", "/a"),
    ("POST", "/b/7"),
    ("GET", "/framed"),
    ("GET", "/forced"),
    ("GET", "/own"),
    ("GET", "/missing"),
]


def test_once_talisman_headers_equal_stock_talisman_per_endpoint_and_scheme():
    ours, stock = headers_app(OnceTalisman), headers_app(Talisman)
    # one app for both schemes, twice: the later answers come from OnceTalisman's cache
    for client_pass, scheme in enumerate(["https", "http", "http", "https"]):
        for method, path in REQUESTS:
            url = f"{scheme}://localhost{path}"
            mine = ours.test_client().open(url, method=method)
            theirs = stock.test_client().open(url, method=method)
            assert mine.status_code == theirs.status_code, (method, path, client_pass)
            # in order, our one deliberate difference last (OnceTalisman's docstring)
            expected = [(k, v) for k, v in theirs.headers.items() if k != "Content-Length"]
            expected.append(("X-XSS-Protection", "0"))
            got = [(k, v) for k, v in mine.headers.items() if k != "Content-Length"]
            assert got == expected, (method, path, scheme, client_pass)
            assert ("Strict-Transport-Security" in mine.headers) is (scheme == "https")
            assert mine.headers["X-Frame-Options"] == ("SAMEORIGIN" if path == "/framed" else "DENY")
            assert mine.headers.getlist("X-Frame-Options") == [mine.headers["X-Frame-Options"]]
            assert (mine.status_code == 302) is (path == "/forced" and scheme == "http")
    assert ours.config["SESSION_COOKIE_SECURE"] is stock.config["SESSION_COOKIE_SECURE"] is True


# --- Flask-Limiter --------------------------------------------------------------------------


def test_limiter_private_names_we_rely_on_exist():
    assert params(Limiter._check_request_limit) == ["self", "callable_name", "in_middleware"]
    assert isinstance(inspect.getattr_static(Limiter, "limiter"), property)
    # the fallback switch our recovery drives: the `limiter` property reads these two flags
    source = inspect.getsource(Limiter)
    names = ("_storage_dead", "_in_memory_fallback_enabled", "_fallback_limiter", "_key_prefix", "_storage")
    for name in names:
        assert f"self.{name}" in source, name


def limiter_app(cls):
    app = App(__name__)  # its request remembers the caller, which the policy asks for
    app.config.update(
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_HEADERS_ENABLED=False,  # as the service: its headers are PolicyLimiter.headers
    )
    if cls is PolicyLimiter:
        config = {
            "RATE_LIMIT_PER_MINUTE": 5,
            "API_KEY_RATE_LIMIT_PER_MINUTE": 5,
            "API_KEY_RATE_LIMIT_PER_HOUR": 50,
            "AUTH_FAILURE_RATE_LIMIT": "5/minute",
        }
        limiter = PolicyLimiter(config)
    else:
        limiter = Limiter(get_remote_address)
    limiter.init_app(app)
    return app, limiter


def test_our_request_check_is_the_hook_flask_limiter_registers_and_its_other_hooks_add_nothing():
    app, limiter = limiter_app(Limiter)
    stock = {kind: len(getattr(app, kind)[None]) for kind in ("before_request_funcs", "after_request_funcs")}
    assert limiter._check_request_limit in app.before_request_funcs[None], flask_limiter.__version__

    app, limiter = limiter_app(PolicyLimiter)
    assert stock == {kind: len(getattr(app, kind)[None]) for kind in stock}
    assert limiter._check_request_limit in app.before_request_funcs[None]  # our override is its hook
    assert app.teardown_request_funcs[None], "Flask-Limiter's teardown"

    @app.get("/x")
    def x():
        return jsonify(ok=True)

    def classify() -> None:  # what the observation's first hook does (service/observation.py)
        g.route_class = API

    app.before_request_funcs[None].insert(0, classify)

    with app.test_client() as client:
        response = client.get("/x")
        assert [kind for _, kind, _, _ in g.rate_limits] == ["ip"]  # our check counted the request
        # Flask-Limiter's after-request hook found no limit of its registry: no header, no deduction
        assert limiter.current_limit is None and not limiter.context.conditional_deductions
    assert response.status_code == 200
    assert not [name for name in response.headers.keys() if "ratelimit" in name.lower()]


def test_only_flask_limiters_request_check_writes_its_context():
    # PolicyLimiter.context is one shared empty context: right only while nothing but the request
    # check it replaces (and what that calls) writes one; a new reader or writer fails here
    users = set()
    for name, value in vars(Limiter).items():
        func = value.fget if isinstance(value, property) else value
        if callable(func) and "self.context" in inspect.getsource(func):
            users.add(name)
    writers = {"_Limiter__filter_limits", "_Limiter__evaluate_limits", "_check_request_limit"}
    readers = {"_Limiter__check_conditional_deductions", "_Limiter__release_context"}
    assert users == writers | readers | {"current_limit", "current_limits"}
    package = Path(flask_limiter.__file__).parent
    for module in package.rglob("*.py"):
        if module.name != "_extension.py":
            assert not re.search(r"\.context\b", module.read_text()), module
    assert isinstance(inspect.getattr_static(Limiter, "context"), property)

    _, limiter = limiter_app(PolicyLimiter)
    context = limiter.context
    assert context.view_rate_limit is None and not context.conditional_deductions
    with pytest.raises((AttributeError, TypeError)):
        context.view_rate_limit = object()
    with pytest.raises(TypeError):
        context.conditional_deductions["x"] = 1


def test_storage_recovery_switches_the_strategy_back(monkeypatch):
    app, limiter = limiter_app(PolicyLimiter)
    real = limiter.limiter
    assert limiter._in_memory_fallback_enabled
    limiter._storage_dead = True
    assert limiter.limiter is limiter._fallback_limiter and limiter.limiter is not real
    answers = iter([False, True])
    monkeypatch.setattr(limiter._storage, "check", lambda: next(answers))
    limiter._recheck_at = 0.0
    limiter._recover_storage()  # storage still down: wait longer, stay on the fallback
    assert limiter._storage_dead and limiter._recheck_delay == 2.0
    limiter._recheck_at = 0.0
    limiter._recover_storage()
    assert not limiter._storage_dead and limiter.limiter is real


# --- prometheus-flask-exporter ----------------------------------------------------------------


def test_the_exporters_metrics_view_serves_generate_metrics_behind_our_decorator(sqlite_url):
    from prometheus_flask_exporter import PrometheusMetrics

    from service.metrics.endpoint import ScrapeExporter
    from service.state import app_state
    from tests.conftest import make_app

    assert params(PrometheusMetrics.generate_metrics) == ["self", "accept_header", "names"]
    assert "self.generate_metrics(accept_header, names)" in inspect.getsource(
        PrometheusMetrics.register_endpoint
    )
    app = make_app(sqlite_url, METRICS_ENABLED=True, METRICS_TOKEN="s3cret")
    exporter = app_state(app).exporter
    assert isinstance(exporter, ScrapeExporter)
    seen = []

    def generate(accept_header=None, names=None):
        seen.append((accept_header, names))
        return "ours 1\n", "text/plain; version=0.0.4; charset=utf-8"

    exporter.generate_metrics = generate  # the view looks it up on each scrape
    client = app.test_client()
    assert client.get("/metrics").status_code == 401  # metrics_decorator applied
    r = client.get("/metrics?name[]=a", headers={"Authorization": "Bearer s3cret", "Accept": "text/plain"})
    assert r.get_data(as_text=True) == "ours 1\n" and seen == [("text/plain", ["a"])]


# --- SQLAlchemy, prometheus_client, gunicorn --------------------------------------------------


def test_queue_pool_keeps_its_overflow_where_pool_limit_reads_it():
    from sqlalchemy.pool import QueuePool

    from service.db import pool_limit

    pool = QueuePool(lambda: None, pool_size=3, max_overflow=4)
    assert pool._max_overflow == 4 and pool_limit(pool) == 7


def test_mmaped_dict_internals_reserved_files_extend(tmp_path):
    from prometheus_client import values
    from prometheus_client.mmap_dict import MmapedDict

    from service.metrics_storage import FILE_BYTES, ReservedMmapedDict

    assert hasattr(values, "ValueClass") and hasattr(values, "MultiProcessValue")
    assert params(MmapedDict._init_value) == ["self", "key"]
    # ReservedMmapedDict reserves the size this loop will double to, with the entry layout it packs
    assert "self._capacity *= 2" in inspect.getsource(MmapedDict._init_value)
    assert "i{len(padded)}sdd" in inspect.getsource(MmapedDict._init_value)
    assert params(MmapedDict.read_all_values_from_file) == ["filename"]
    stored = ReservedMmapedDict(str(tmp_path / "counter_1.db"))
    try:
        assert (stored._used, stored._capacity) == (8, FILE_BYTES)  # the layout _init_value computes from
        assert stored._f.fileno() >= 0 and stored._fname.endswith("counter_1.db")
        for n in range(2100):  # just past the first size: the doubled file is reserved, not sparse
            stored.write_value(f"series-{n}", float(n), 0.0)
        size = (tmp_path / "counter_1.db").stat()
        assert size.st_size > FILE_BYTES and size.st_blocks * 512 >= size.st_size
        assert stored.read_value("series-2099") == (2099.0, 0.0)
    finally:
        stored.close()


def test_gunicorn_names_the_drain_drives_exist():
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker
    from gunicorn.workers.sync import SyncWorker

    assert hasattr(Arbiter, "LISTENERS") and "reexec_pid" in inspect.getsource(Arbiter.__init__)
    assert "systemd" in inspect.getsource(Arbiter.__init__)
    worker_init = inspect.getsource(Worker.__init__)
    assert all(name in worker_init for name in ("self.alive", "self.sockets"))
    assert "self.PIPE" in inspect.getsource(Worker.init_process)
    assert params(SyncWorker.handle) == ["self", "listener", "client", "addr"]
    assert params(Worker.notify) == ["self"]


def test_gunicorns_sync_handle_passes_the_parsed_request_to_handle_request():
    """StreamingSyncWorker (service/gunicorn_worker.py) overrides only `handle_request`: it must
    stay where `SyncWorker.handle` sends a parsed request, with the listener, the connection and
    the address, and `handle` must close the connection after it (why a stream gets a dup)."""
    import socket
    import types

    from gunicorn.config import Config

    from service.gunicorn_worker import STREAM_PATH, StreamingSyncWorker

    worker = StreamingSyncWorker.__new__(StreamingSyncWorker)  # no arbiter, no process
    worker.cfg = Config()
    worker.log = types.SimpleNamespace(debug=lambda *a: None, exception=lambda *a: None)
    seen = []
    worker.handle_request = lambda listener, req, client, addr: seen.append((listener, req, client, addr))
    server, client = socket.socketpair()
    with client:
        client.sendall(b"GET /api/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        worker.handle("listener", server, ("127.0.0.1", 9))
    ((listener, req, conn, addr),) = seen
    assert (listener, req.method, req.path, conn, addr) == (
        "listener",
        "GET",
        STREAM_PATH,
        server,
        ("127.0.0.1", 9),
    )
    assert server.fileno() == -1  # closed by `handle` when it returns


# --- werkzeug -----------------------------------------------------------------------------------


def test_werkzeug_headers_keep_their_pairs_in_the_list_add_checked_extends():
    from werkzeug.datastructures import Headers

    assert "self._list.append((key, value_str))" in inspect.getsource(Headers.add)
    assert "return iter(self._list)" in inspect.getsource(Headers.__iter__)
    headers = Headers([("Content-Type", "application/json")])
    add_checked(headers, (("X-A", "1"), ("content-type", "text/plain")))
    assert headers.to_wsgi_list() == [
        ("Content-Type", "application/json"),
        ("X-A", "1"),
        ("content-type", "text/plain"),
    ]
    assert headers.getlist("Content-Type") == ["application/json", "text/plain"] and headers["x-a"] == "1"
