"""The console page in process: served without a key, its CSP, its two files and their caching.

What the page does in a browser is tests/e2e/test_e2e_console.py (headless Chromium).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from service.console import ASSETS, CSP, IMMUTABLE, STATIC
from tests.conftest import make_app, reset_database
from tests.helpers import assert_error

PAGE_CSP = "; ".join(f"{name} {value}" for name, value in CSP.items())


class Markup(HTMLParser):
    """Every tag with its attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_data(self, data):
        if self._open in ("script", "style") and data.strip():
            self.inline.append(data)

    def handle_endtag(self, tag):
        self._open = None


def parse(html: str) -> Markup:
    markup = Markup()
    markup.feed(html)
    return markup


@pytest.fixture
def sqlite_app(sqlite_url):
    app = make_app(sqlite_url, API_AUTH_REQUIRED=True, ENABLE_RATE_LIMITING=True, RATE_LIMIT_PER_MINUTE=2)
    reset_database(app)
    return app


def test_the_page_is_served_without_a_key_under_its_own_strict_csp(sqlite_app):
    client = sqlite_app.test_client()
    r = client.get("/console")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert r.headers["Content-Security-Policy"] == PAGE_CSP
    assert "unsafe" not in PAGE_CSP and "*" not in PAGE_CSP
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-cache"
    # the API keeps its own policy: nothing may load from a JSON answer
    api_policy = client.get("/api/tokens/summary").headers["Content-Security-Policy"]
    assert api_policy.startswith("default-src 'none'")


def test_the_page_has_no_inline_script_or_style_and_asks_for_the_key(sqlite_app):
    markup = parse(sqlite_app.test_client().get("/console").get_data(as_text=True))
    assert markup.inline == []
    assert not [tag for tag, attrs in markup.tags if "style" in attrs or tag == "style"]
    assert not [attrs for _, attrs in markup.tags for name in attrs if name.startswith("on")]
    scripts = [attrs["src"] for tag, attrs in markup.tags if tag == "script"]
    sheets = [attrs["href"] for tag, attrs in markup.tags if tag == "link" and attrs["rel"] == "stylesheet"]
    icons = [attrs["href"] for tag, attrs in markup.tags if tag == "link" and attrs["rel"] == "icon"]
    found = sorted(url.split("?")[0] for url in sheets + scripts + icons)
    assert found == sorted(f"/console/static/{name}" for name in ASSETS)
    key_inputs = [attrs for tag, attrs in markup.tags if tag == "input" and attrs.get("id") == "key-input"]
    assert key_inputs and key_inputs[0]["type"] == "password"


def test_assets_by_their_digest_are_cached_for_a_year_and_otherwise_revalidated(sqlite_app):
    client = sqlite_app.test_client()
    html = client.get("/console").get_data(as_text=True)
    for url in re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html):
        with client.get(url) as r:
            assert r.status_code == 200 and r.headers["Cache-Control"] == IMMUTABLE, url
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            kind = url.split("?")[0].rsplit(".", 1)[1]
            assert r.mimetype == {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}[kind]
        with client.get(url.split("?")[0] + "?v=0123456789ab") as stale:
            assert stale.status_code == 200 and stale.headers["Cache-Control"] == "no-cache"
    assert_error(client.get("/console/static/nothing.js"), 404, "NOT_FOUND")
    assert client.get("/console/static/..%2fconsole.py").status_code == 404


def test_the_page_and_its_files_are_not_rate_limited(sqlite_app):
    client = sqlite_app.test_client()
    for _ in range(5):
        for path in ("/console", "/console/static/console.js"):
            with client.get(path) as r:
                assert r.status_code == 200, path
    assert client.get("/api/tokens/summary").status_code == 401  # the API still wants its key


def test_the_script_keeps_the_key_out_of_urls_cookies_and_lasting_storage():
    text = (STATIC / "console.js").read_text()
    assert "sessionStorage" in text and "X-API-Key" in text
    assert "localStorage" not in text and "document.cookie" not in text
    assert "EventSource" not in text.replace("not EventSource", "")  # a header cannot travel with it
    assert not re.search(r"[?&](api_?key|key)=", text)
