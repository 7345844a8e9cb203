"""The route table: every registered rule has the class its blueprint declares, and every consumer
(authentication, limits, request metrics, monitoring, access line, tracing, HTTPS redirect) follows it."""

from __future__ import annotations

import logging
import re

import pytest
from flask import g

from service.authentication import authenticate
from service.errors import ApiError, Unauthorized
from service.observation import observer
from service.response_headers import require_https
from service.route_table import route_table
from service.state import app_state
from service.tracing import excluded_urls
from tests.conftest import make_app

# the deliberate classes (docs/OBSERVABILITY.md); a new blueprint must be added here
EXPECTED = {
    "api": "api",
    "tokens": "keyed",
    "pool_tokens": "keyed",  # the tokens blueprint again, under /api/pools/<pool>/tokens
    "pools": "keyed",
    "events": "keyed",
    "monitoring": "keyed",
    "health": "probe",
    "openapi": "docs",
    "console": "docs",
    None: "api",  # no blueprint: 404, 405, a route on the app itself unless declared below
}
# routes on the app itself, by endpoint: prometheus-flask-exporter's /metrics (a scrape: a probe)
EXPECTED_ENDPOINTS = {"prometheus_metrics": "probe"}


@pytest.fixture(scope="module")
def app(sqlite_url):
    return make_app(sqlite_url, METRICS_ENABLED=True, API_AUTH_REQUIRED=True, FORCE_HTTPS=True)


def _rules(app):
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "8b7c2c1e-1111-4d4d-9e9e-0123456789ab", rule.rule)
        method = "GET" if "GET" in rule.methods else sorted(rule.methods - {"OPTIONS"})[0]
        blueprint = rule.endpoint.rpartition(".")[0] or None
        yield rule, path, method, EXPECTED_ENDPOINTS.get(rule.endpoint) or EXPECTED[blueprint]


def test_every_blueprint_declares_the_expected_class(app):
    table = route_table(app)
    assert set(app.blueprints) <= set(EXPECTED)
    for name in app.blueprints:
        assert table.of(name).name == EXPECTED[name], name
    assert table.of(None).name == "api"


def test_every_rule_follows_its_class(app):
    table = route_table(app)
    begin = app.before_request_funcs[None][0]
    limiter = app_state(app).limiter
    exporter = app_state(app).exporter
    tracing = re.compile(excluded_urls(app))
    seen = set()
    for rule, path, method, expected in _rules(app):
        seen.add(expected)
        with app.test_request_context(path, method=method, base_url="http://localhost"):
            begin()  # the observation's first hook: the class, once
            route_class = g.route_class
            assert route_class.name == expected, rule
            assert route_class is table.of_endpoint(rule.endpoint)
            # authentication: a keyed route refuses a call without a key (API_AUTH_REQUIRED)
            if route_class.keyed:
                with pytest.raises(Unauthorized):
                    authenticate()
            else:
                authenticate()
            # the HTTPS redirect (FORCE_HTTPS is on): probes and scrapes answer plain HTTP
            if route_class.https_redirect:
                with pytest.raises(ApiError):
                    require_https()
            else:
                require_https()
            # limits: an unkeyed caller is limited per IP on limited routes only
            assert bool(limiter.limits_for_request()) == route_class.limited, rule
            # request metrics and monitoring: API traffic only
            excluded = any(p.match(path) for p in exporter.excluded_paths)
            assert excluded == (not route_class.measured), rule
            # tracing: the instrumentation's exclusion list
            assert bool(tracing.search("http://localhost" + path)) == (not route_class.traced), rule
            assert bool(tracing.search("http://localhost" + path + "?x=1")) == (not route_class.traced)
    assert seen == {"api", "keyed", "probe", "docs"}


def test_unmatched_paths_are_api_traffic_even_under_a_probe_prefix(app):
    tracing = re.compile(excluded_urls(app))
    exporter_patterns = app_state(app).exporter.excluded_paths
    for path in ("/healthz/x", "/metrics/", "/openapi.json.bak", "/nowhere"):
        assert not any(p.match(path) for p in exporter_patterns)
        assert not tracing.search("http://localhost" + path)
        with app.test_request_context(path):
            app.before_request_funcs[None][0]()
            assert g.route_class.name == "api" and g.route == "<unmatched>"


@pytest.mark.parametrize(
    ("path", "level"),
    [
        ("/healthz", logging.DEBUG),
        ("/metrics", logging.DEBUG),
        ("/openapi.json", logging.INFO),
        ("/api", logging.INFO),
    ],
)
def test_access_line_level_is_the_class_level(app, caplog, path, level):
    records = []
    observer(app).subscribe(observed=records.append)
    caplog.set_level(logging.DEBUG, logger="tokenpool.access")
    app.test_client().get(path, headers={"X-Forwarded-Proto": "https"}, base_url="https://localhost")
    (line,) = [r for r in caplog.records if r.name == "tokenpool.access"]
    assert line.levelno == level == records[-1].route_class.log_level
