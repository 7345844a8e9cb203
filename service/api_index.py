"""`GET /api`: the API's entry point, with links to its resources and its OpenAPI document.

Its body depends only on the settings, so it is rendered once per app; each
request pays only for the stack around it (rate limit, logs, metrics, headers).
"""

from __future__ import annotations

from flask import Blueprint

from .app import Response
from .openapi import Answer, Body, operation
from .route_table import API, declare
from .state import app_state

bp = declare(Blueprint("api", __name__), API)

LINKS = {
    "tokens": "/api/tokens",
    "activate": "/api/tokens/activate",
    "summary": "/api/tokens/summary",
    "openapi": "/openapi.json",
    "health": "/health",
}


class ApiIndex(Body):
    """The entry point's body."""

    service: str
    version: str
    lifetime_seconds: int
    links: dict[str, str]


def render(app) -> bytes:
    """The index document of this app, written as every JSON answer is (the app's JSON provider)."""
    config = app.config
    return app.json.dumps(
        {
            "service": "tokenpool",
            "version": config["APP_VERSION"],
            "lifetime_seconds": config["TOKEN_LIFETIME_SECONDS"],
            "links": LINKS,
        }
    ).encode()


@bp.record_once
def _render_once(state) -> None:
    app_state(state.app).api_index = render(state.app)


@bp.get("/api")
@operation(
    "The API's entry point: service, version, token lifetime and links",
    operation_id="apiIndex",
    answers={200: Answer("The index", ApiIndex)},
    errors=(429,),
)
def index():
    return Response(app_state().api_index, mimetype="application/json")
