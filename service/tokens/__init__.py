"""The tokens blueprint: the REST API of the pool under /api/tokens."""

from flask import Blueprint

bp = Blueprint("tokens", __name__, url_prefix="/api/tokens")

from . import routes  # noqa: E402,F401  (registers the views on bp)
