"""The route table: each blueprint declares its class once, and every cross-cutting concern reads it.

A class says, for every route of a blueprint: whether the caller's API key is
looked up (and whose bucket the rate limit charges), whether the route is rate
limited at all, whether it is API traffic (request metrics, the monitoring
figures, the slow-request line), whether it is traced, the level of its access
line and whether plain HTTP is redirected to HTTPS. Authentication, the
limiter, the metrics, the monitoring figures, the access line, tracing and the
HTTPS redirect all read it, so they cannot disagree. docs/OBSERVABILITY.md
gives the table and the reasons.

A request's class is looked up once, when it begins (service/observation.py).
A request without a blueprint (no route: 404 and 405; a route added to the app
itself) is `api` traffic: it is counted, traced and limited per client IP,
unless its endpoint is declared (`RouteTable.declare_endpoint`: the exporter's
/metrics, which a library adds to the app itself).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from flask import Blueprint, Flask
from flask.sansio.blueprints import Blueprint as AnyBlueprint

from .labels import CONVERTER
from .state import app_state


@dataclass(frozen=True)
class RouteClass:
    """What the service does around every route of a class (one row of the table)."""

    name: str
    keyed: bool  # the API key is looked up; the per-key limits apply to a caller with one
    limited: bool  # rate limited (per key or per client IP); never a CORS preflight
    measured: bool  # API traffic: request metrics, monitoring figures, slow-request line
    traced: bool  # a server span when tracing is on
    log_level: int  # of the access line
    https_redirect: bool  # plain HTTP is redirected when FORCE_HTTPS is on


API = RouteClass(
    "api", keyed=False, limited=True, measured=True, traced=True, log_level=logging.INFO, https_redirect=True
)
KEYED = RouteClass(
    "keyed", keyed=True, limited=True, measured=True, traced=True, log_level=logging.INFO, https_redirect=True
)
# health probes and the /metrics scrape: polled every few seconds over plain HTTP by machines
PROBE = RouteClass(
    "probe",
    keyed=False,
    limited=False,
    measured=False,
    traced=False,
    log_level=logging.DEBUG,
    https_redirect=False,
)
# the OpenAPI document: fetched now and then by a person or a tool; not API traffic, but a line each
DOCS = RouteClass(
    "docs",
    keyed=False,
    limited=False,
    measured=False,
    traced=False,
    log_level=logging.INFO,
    https_redirect=True,
)
CLASSES = (API, KEYED, PROBE, DOCS)

_declared: dict[AnyBlueprint, RouteClass] = {}


def declare(bp: Blueprint, route_class: RouteClass) -> Blueprint:
    """Give every route of `bp` this class; returns `bp`."""
    _declared[bp] = route_class
    return bp


class RouteTable:
    """Blueprint name -> class for one app, built once its blueprints are registered."""

    def __init__(self, app: Flask) -> None:
        missing = [name for name, bp in app.blueprints.items() if bp not in _declared]
        if missing:
            raise RuntimeError(f"blueprints without a route class (route_table.declare): {missing}")
        self.by_blueprint: dict[str | None, RouteClass] = {
            name: _declared[bp] for name, bp in app.blueprints.items()
        }
        self.by_endpoint: dict[str | None, RouteClass] = {}  # routes on the app itself
        self.app = app

    def declare_endpoint(self, endpoint: str, route_class: RouteClass) -> None:
        """Give a route registered on the app itself (no blueprint) this class."""
        self.by_endpoint[endpoint] = route_class

    def of(self, blueprint: str | None, endpoint: str | None = None) -> RouteClass:
        """The class of a request to `blueprint` and `endpoint` (`request.blueprint`,
        `request.endpoint`); without a blueprint, the endpoint's declared class, else `api`."""
        if blueprint is None:
            return self.by_endpoint.get(endpoint, API)
        return self.by_blueprint.get(blueprint, API)

    def of_endpoint(self, endpoint: str) -> RouteClass:
        """The class of a route by its endpoint name (`tokens.activate`)."""
        blueprint, dot, _ = endpoint.rpartition(".")
        return self.of(blueprint if dot else None, endpoint)

    def rules(self, wanted):
        """The app's URL rules whose class satisfies `wanted(route_class)`."""
        return [rule for rule in self.app.url_map.iter_rules() if wanted(self.of_endpoint(rule.endpoint))]

    def path_pattern(self, wanted) -> str | None:
        """One anchored regex matching exactly the paths of those rules (None when there are none).

        A converter (`<token_id>`) matches one path segment.
        """
        paths = sorted({rule.rule for rule in self.rules(wanted)})
        if not paths:
            return None
        return "^(?:" + "|".join(_path_regex(p) for p in paths) + ")$"


def _path_regex(rule: str) -> str:
    parts = CONVERTER.split(rule)  # literal, converter name, literal, ...
    return "".join(re.escape(part) if i % 2 == 0 else "[^/]+" for i, part in enumerate(parts))


def init_route_table(app: Flask) -> RouteTable:
    """Build the app's table (after its blueprints are registered).

    Raises RuntimeError naming any blueprint that declared no class.
    """
    table = RouteTable(app)
    app_state(app).route_table = table
    return table


def route_table(app: Flask) -> RouteTable:
    """The table built by `init_route_table`."""
    return app_state(app).route_table
