"""`GET /console`: the operator console, a page whose script reads the JSON API in the browser.

The page carries no data and needs no key: its script asks the operator for an
admin key once, keeps it in the tab's sessionStorage and sends it as
`X-API-Key` on every call, the event stream included (docs/CONSOLE.md). The
page, its stylesheet, its script and its icon come from this blueprint, under a
CSP that allows only files and calls of this origin (no inline script or style).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Blueprint, current_app, render_template, request, send_from_directory, url_for

from .errors import NotFound
from .openapi import Answer, operation
from .route_table import DOCS, declare
from .state import app_state

bp = declare(Blueprint("console", __name__, template_folder="templates"), DOCS)
STATIC = Path(__file__).resolve().parent / "static"
ASSETS = ("console.css", "console.js", "favicon.svg")
# a year: an asset's URL carries its content's digest, so a changed file is a new URL
IMMUTABLE = "public, max-age=31536000, immutable"
CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}


def asset_digests() -> dict[str, str]:
    """{file name: the first 12 hex digits of its SHA-256} for the console's assets."""
    return {name: hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12] for name in ASSETS}


@bp.record_once
def _digest_once(state) -> None:
    app_state(state.app).console_assets = asset_digests()


def _digests() -> dict[str, str]:
    """This app's `asset_digests()`, computed once when the blueprint was registered."""
    return app_state().console_assets


def _asset_url(name: str) -> str:
    return url_for("console.asset", name=name, v=_digests()[name])


@bp.get("/console")
@operation(
    "The operator console: an HTML page whose script reads this API with an admin key",
    tags=("console",),
    answers={200: Answer("The page (no data: it needs no key)", {"type": "string"}, "text/html")},
)
def console():
    """The page: no data and no key needed; its own CSP (`CSP`) and `Cache-Control: no-cache`."""
    response = current_app.make_response(render_template("console.html", asset=_asset_url))
    response.headers["Cache-Control"] = "no-cache"  # revalidated: a deploy's new asset URLs show at once
    return response


console.talisman_view_options = {"content_security_policy": CSP}  # type: ignore[attr-defined]


@bp.get("/console/static/<name>")
@operation(
    "A file of the console (console.css, console.js, favicon.svg); cached a year when asked "
    "for with its current digest (`?v=`)",
    tags=("console",),
    answers={200: Answer("The file", {"type": "string"}, "application/octet-stream")},
    errors=(404,),
)
def asset(name: str):
    """One of `ASSETS`, cached a year when `?v=` is its current digest, else revalidated.

    Raises NotFound for any other name.
    """
    if name not in _digests():
        raise NotFound("The requested URL was not found.")
    response = send_from_directory(STATIC, name)
    current = response.status_code in (200, 304) and request.args.get("v") == _digests()[name]
    response.headers["Cache-Control"] = IMMUTABLE if current else "no-cache"
    return response
