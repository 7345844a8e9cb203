"""`service.app.Response` sends what werkzeug's own `get_wsgi_response` sends, on every path.

The fast path skips werkzeug's header copy only when that copy would change
nothing; the tripwire at the end fails when werkzeug changes the two methods,
so the conditions are checked again on that day.
"""

from __future__ import annotations

import hashlib
import inspect

import pytest
from flask import Response as FlaskResponse
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response as WerkzeugResponse

from service.app import Response


def build(cls, status, headers=(), body=b'{"ok": true}', stream=False, drop_length=False):
    response = cls((b"x" for _ in range(3)) if stream else body, status=status, mimetype="application/json")
    for name, value in headers:
        response.headers.add(name, value)
    if drop_length:
        response.headers.pop("Content-Length", None)
    return response


CASES = [
    {"status": 200},
    {"status": 200, "headers": [("X-A", "1"), ("X-A", "2"), ("x-b", "3")]},
    {"status": 201, "headers": [("Location", "/api/tokens/7")]},
    {"status": 308, "headers": [("location", "https://example.com/ü")]},
    {"status": 200, "headers": [("Content-Location", "/ä")]},
    {"status": 204, "body": b""},
    {"status": 304, "headers": [("ETag", '"x"'), ("Content-Encoding", "gzip")]},
    {"status": 103, "body": b""},
    {"status": 200, "stream": True},
    {"status": 200, "drop_length": True},
    {"status": 404, "drop_length": True},
    {"status": 429, "headers": [("Retry-After", "3")]},
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c['status']}-{i}" for i, c in enumerate(CASES)])
def test_response_sends_what_werkzeug_sends(case, method):
    environ = EnvironBuilder(
        path="/api/tokens", method=method, base_url="http://localhost:8000"
    ).get_environ()
    ours = build(Response, **case)
    stock = build(FlaskResponse, **case)
    our_iter, our_status, our_headers = ours.get_wsgi_response(environ)
    their_iter, their_status, their_headers = stock.get_wsgi_response(environ)
    assert (our_status, our_headers) == (their_status, their_headers)
    assert b"".join(our_iter) == b"".join(their_iter)
    our_headers.append(("X-Later", "1"))  # a list of its own: the response's headers are not handed out
    assert "X-Later" not in ours.headers


def test_the_werkzeug_methods_the_fast_path_stands_in_for_are_unchanged():
    # Response.get_wsgi_response skips get_wsgi_headers when its copy would equal the headers; if
    # werkzeug changes either method, read them again and update the conditions (and these digests)
    digests = {
        name: hashlib.sha256(inspect.getsource(getattr(WerkzeugResponse, name)).encode()).hexdigest()[:16]
        for name in ("get_wsgi_headers", "get_wsgi_response")
    }
    assert digests == {"get_wsgi_headers": "c602160e42792250", "get_wsgi_response": "1f12afb41645332c"}


def test_a_plain_answer_skips_the_header_copy(monkeypatch):
    environ = EnvironBuilder(path="/api", method="GET").get_environ()
    response = build(Response, 200, [("X-Request-ID", "abc")])
    monkeypatch.setattr(response, "get_wsgi_headers", lambda environ: pytest.fail("copied"))
    assert response.get_wsgi_response(environ)[2] == list(response.headers)
