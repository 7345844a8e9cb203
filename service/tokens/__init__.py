"""The tokens blueprint: the REST API of a pool's tokens, under /api/tokens (the `default`
pool) and /api/pools/<pool>/tokens (service/__init__.py registers it twice)."""

from flask import Blueprint
from werkzeug.routing import BaseConverter

from ..route_table import KEYED, declare

bp = declare(Blueprint("tokens", __name__, url_prefix="/api/tokens"), KEYED)


class TokenIdConverter(BaseConverter):
    """A path segment that is not one of the collection's own words.

    So `GET /api/tokens/activate` is a 405 for the activate route, not a malformed token id.
    """

    regex = r"(?!(?:activate|active|summary)(?:/|$))[^/]+"


class PoolNameConverter(BaseConverter):
    """A pool's name: `^[a-z0-9][a-z0-9_-]{0,62}$`; any other segment is no route (404)."""

    regex = r"[a-z0-9][a-z0-9_-]{0,62}"


@bp.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters["token_id"] = TokenIdConverter
    state.app.url_map.converters["pool_name"] = PoolNameConverter


from . import routes  # noqa: E402,F401  (registers the views on bp)
