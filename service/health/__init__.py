"""The health blueprint: probes for load balancers, Kubernetes and humans."""

from flask import Blueprint

from ..route_table import PROBE, declare

bp = declare(Blueprint("health", __name__), PROBE)

from . import routes  # noqa: E402,F401  (registers the views on bp)
