"""The pools blueprint: pool administration under /api/pools and a user's leases across pools."""

from flask import Blueprint

from ..route_table import KEYED, declare

bp = declare(Blueprint("pools", __name__), KEYED)

from . import routes, tickets  # noqa: E402,F401  (register the views on bp)
