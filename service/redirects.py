"""Every redirect the service answers: the method kept, a JSON body, a Location the client cannot choose.

Two redirects exist: the HTTPS upgrade (`FORCE_HTTPS`) and werkzeug's path
normalisation (`/api//tokens` -> `/api/tokens`). Both answer 308 Permanent
Redirect, which a client follows with the same method and body (RFC 9110
section 15.4.9; a 301/302 is followed with GET, and a POST's body is lost),
in the one JSON error shape. An absolute Location is built from `PUBLIC_URL`,
never from the request's Host header (which a client sets at will); without
`PUBLIC_URL` the path redirect is relative and the HTTPS upgrade, which needs
an absolute URL, is refused with 403 HTTPS_REQUIRED.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import current_app, request
from werkzeug.routing import RequestRedirect

from .errors import ApiError

_PLACEHOLDER_HOST = "service.invalid"  # RFC 6761: a name that never resolves
# RFC 3986 section 3.3: pchar and "/" stay in a path; anything else (a decoded CR or LF, a
# space, "%", non-ASCII) is percent-encoded, so a Location is one clean header.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_ENCODED_SAFE = _PATH_SAFE + "?%"  # a path and query already percent-encoded


class Redirect(ApiError):
    """308 to `location` (in the `Location` header and `details.location`)."""

    code, error_code = 308, "REDIRECT"

    def __init__(self, location: str, message: str):
        super().__init__(message, details={"location": location}, reason="redirect")
        self.response_headers = {"Location": location}


class HttpsRedirect(Redirect):
    """The redirect of plain HTTP to HTTPS (FORCE_HTTPS): error_code HTTPS_REQUIRED."""

    error_code = "HTTPS_REQUIRED"


class HttpsRequired(ApiError):
    """The request came over plain HTTP, FORCE_HTTPS is on and no PUBLIC_URL says where to go."""

    code, error_code = 403, "HTTPS_REQUIRED"


def _relative(encoded: str) -> str:
    """A percent-encoded path (and query) as an origin-relative reference: one leading slash,
    never `//` (which a browser reads as another host)."""
    return "/" + quote(encoded, safe=_ENCODED_SAFE).lstrip("/")


def https_redirect() -> ApiError:
    """The answer to a plain-HTTP request when FORCE_HTTPS is on: HttpsRedirect or HttpsRequired."""
    public = current_app.config.get("PUBLIC_URL")
    if not public:
        return HttpsRequired("This API is served over HTTPS only.")
    target = quote(request.script_root + request.path, safe=_PATH_SAFE)
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")  # as the client encoded it
    target = _relative(target)
    return HttpsRedirect(public + target, "This API is served over HTTPS: repeat the request at Location.")


def routing_redirect(exc: RequestRedirect) -> Redirect:
    """werkzeug's RequestRedirect (merged slashes, a strict trailing slash), re-aimed at our origin.

    werkzeug writes the new URL with the Host header of the request; the same
    match is run again on an adapter bound to a placeholder host, and only the
    path and query of its answer are kept.
    """
    adapter = current_app.url_map.bind(
        _PLACEHOLDER_HOST,
        script_name=request.script_root or "/",
        url_scheme="http",
        path_info=request.path,
        query_args=request.query_string.decode("latin-1"),
    )
    try:
        adapter.match(method=request.method)
        target = quote(request.path, safe=_PATH_SAFE)  # not reached: the same match redirects again
    except RequestRedirect as again:
        target = again.new_url.removeprefix(f"http://{_PLACEHOLDER_HOST}")
    location = (current_app.config.get("PUBLIC_URL") or "") + _relative(target)  # werkzeug encoded it
    return Redirect(location, "The resource is at the URL in Location.")
