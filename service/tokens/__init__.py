"""The tokens blueprint: the REST API of the pool under /api/tokens."""

from flask import Blueprint
from werkzeug.routing import BaseConverter

from ..route_table import KEYED, declare

bp = declare(Blueprint("tokens", __name__, url_prefix="/api/tokens"), KEYED)


class TokenIdConverter(BaseConverter):
    """A path segment that is not one of the collection's own words.

    So `GET /api/tokens/activate` is a 405 for the activate route, not a malformed token id.
    """

    regex = r"(?!(?:activate|active|summary)(?:/|$))[^/]+"


@bp.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters["token_id"] = TokenIdConverter


from . import routes  # noqa: E402,F401  (registers the views on bp)
