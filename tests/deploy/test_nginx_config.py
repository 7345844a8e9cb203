"""The nginx templates render, pass `nginx -t`, and proxy the way the service expects.

Self-contained: stdlib + pytest. Needs the `nginx` binary (CI installs it);
`openssl` only for the TLS example, `envsubst` only for the envsubst check.
Everything runs unprivileged-friendly: a scratch prefix, pid, logs and temp
paths under tmp_path, and a loopback port chosen at run time.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.request_context import VALID_ID
from tests.helpers import ERROR_KEYS
from tests.procs import NGINX, Nginx, free_port, render
from tests.web import raw_http, raw_request

REPO = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO / "nginx"

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx binary not installed (CI installs it: apt-get install -y nginx)"
)


def _render(tmp_path: Path, **overrides: str) -> Path:
    """Render all templates under tmp_path/conf with scratch paths; return nginx.conf."""
    conf = tmp_path / "conf"
    values = render.values_from(
        {},
        NGINX_PID=str(tmp_path / "nginx.pid"),
        NGINX_ERROR_LOG=str(tmp_path / "error.log"),
        NGINX_ACCESS_LOG=str(tmp_path / "access.log"),
        NGINX_TEMP_DIR=str(tmp_path),
        LISTEN_PORT=f"127.0.0.1:{free_port()}",
    )
    values.update(overrides)
    render.render_all(conf, values)
    return conf / "nginx.conf"


def _nginx_t(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NGINX, "-t", "-q", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- rendering -----------------------------------------------------------------


def test_templates_use_only_known_placeholders():
    templates = render.templates()
    assert {t.name for t in templates} >= {
        "nginx.conf.template",
        "tokenpool.conf.template",
        "tokenpool-proxy.conf.template",
    }
    used = set()
    for template in templates:
        used |= render.placeholders(template.read_text())
    assert used == set(render.DEFAULTS), "every default is used and every placeholder has one"


def test_render_rejects_unknown_placeholder():
    with pytest.raises(KeyError, match="NOPE"):
        render.render_text("listen ${NOPE};", render.DEFAULTS)


def test_nginx_variables_survive_rendering(tmp_path):
    conf = _render(tmp_path)
    text = (conf.parent / "snippets" / "tokenpool-proxy.conf").read_text()
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in text
    assert "proxy_set_header X-Request-ID $tokenpool_request_id;" in text
    for path in conf.parent.rglob("*.conf"):
        assert "${" not in path.read_text(), path


def test_committed_rendering_matches_templates(tmp_path):
    """nginx/nginx.conf and friends are exactly the templates rendered with DEFAULTS."""
    written = render.render_all(tmp_path, dict(render.DEFAULTS))
    assert written
    for path in written:
        committed = NGINX_DIR / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run python3 nginx/render.py"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python3 nginx/render.py"


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst (gettext-base) not installed")
def test_envsubst_renders_like_render_py():
    """The official nginx image renders the same templates with envsubst-like substitution."""
    names = " ".join(f"${{{name}}}" for name in render.DEFAULTS)
    env = {**os.environ, **render.DEFAULTS}
    for template in render.templates():
        out = subprocess.run(
            ["envsubst", names],
            input=template.read_text(),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        assert out == render.render_text(template.read_text(), render.DEFAULTS), template


def test_production_settings_present():
    main = (NGINX_DIR / "nginx.conf").read_text()
    proxy = (NGINX_DIR / "snippets" / "tokenpool-proxy.conf").read_text()
    site = (NGINX_DIR / "conf.d" / "tokenpool.conf").read_text()
    assert "log_format tokenpool_json escape=json" in main
    assert '"request_id":"$tokenpool_request_id"' in main
    assert re.search(r"gzip_types[^;]*application/json", main)
    assert "include conf.d/tokenpool.conf;" in main
    # one connection per request: a kept one closed by gunicorn would lose a POST sent on it
    assert not re.search(r"upstream tokenpool \{[^}]*keepalive \d+;", site)
    stream = re.search(r"location = /api/events/stream \{(.*?)\}", proxy, re.S).group(1)
    assert "proxy_buffering off;" in stream and "proxy_read_timeout 1h;" in stream
    assert "client_max_body_size 64k;" in proxy
    assert 'proxy_set_header Connection "";' in proxy
    assert "proxy_http_version 1.1;" in proxy
    for directive in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        assert directive in proxy
    metrics = re.search(r"location = /metrics \{(.*?)\}", proxy, re.S).group(1)
    assert "allow 127.0.0.1;" in metrics and "deny all;" in metrics
    healthz = re.search(r"location = /healthz \{(.*?)\}", proxy, re.S).group(1)
    assert "access_log off;" in healthz and "proxy_pass http://tokenpool;" in healthz
    tls = (NGINX_DIR / "conf.d" / "tls.conf.example").read_text()
    assert "Strict-Transport-Security" in tls and "listen 443 ssl" in tls


# --- nginx -t --------------------------------------------------------------------


@needs_nginx
def test_nginx_t_accepts_default_rendering(tmp_path):
    result = _nginx_t(_render(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr


@needs_nginx
def test_nginx_t_accepts_several_upstreams_and_custom_allow_list(tmp_path):
    conf = _render(
        tmp_path,
        UPSTREAMS="server 127.0.0.1:8001 max_fails=3 fail_timeout=10s; server 127.0.0.2:8002 backup;",
        METRICS_ALLOW="allow 10.42.0.0/16;",
        SERVER_NAME="tokens.example.internal",
    )
    result = _nginx_t(conf, tmp_path)
    assert result.returncode == 0, result.stderr


@needs_nginx
def test_nginx_t_rejects_an_upstream_without_servers(tmp_path):
    """The harness can fail: an empty UPSTREAMS is a configuration error."""
    result = _nginx_t(_render(tmp_path, UPSTREAMS=""), tmp_path)
    assert result.returncode != 0
    assert "no servers are inside upstream" in result.stderr


@needs_nginx
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_nginx_t_accepts_tls_example(tmp_path):
    conf = _render(tmp_path)
    crt, key = tmp_path / "tokenpool.crt", tmp_path / "tokenpool.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls = (NGINX_DIR / "conf.d" / "tls.conf.example").read_text()
    tls = tls.replace("/etc/nginx/tls/tokenpool.crt", str(crt))
    tls = tls.replace("/etc/nginx/tls/tokenpool.key", str(key))
    tls = tls.replace("listen 443 ssl;", f"listen 127.0.0.1:{free_port()} ssl;")
    (conf.parent / "conf.d" / "tls.conf").write_text(tls)
    result = _nginx_t(conf, tmp_path)
    assert result.returncode == 0, result.stderr


# --- nginx in front of a stub upstream ------------------------------------------------


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        type(self).seen.append(record)
        payload = {"echo": record}
        if self.path == "/big":
            payload["filler"] = ["token"] * 2000
        if self.path.startswith("/api/events/stream"):  # a large answer, buffered as it says
            self._stream_answer(self.path.rpartition("=")[2])
            return
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    written = threading.Event()  # the last byte of a stream answer is written

    def _stream_answer(self, buffering: str) -> None:
        body = b": filler\n\n" * (STREAM_ANSWER_BYTES // 11)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Accel-Buffering", buffering)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        type(self).written.set()

    def log_message(self, *args):
        pass


STREAM_ANSWER_BYTES = 24 * 1024 * 1024  # more than the kernel buffers between the three


@pytest.fixture
def upstream():
    _Upstream.seen = []
    _Upstream.written = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(tmp_path, upstream, request):
    nginx = Nginx(tmp_path, [f"127.0.0.1:{upstream.server_port}"], **getattr(request, "param", {})).start()
    yield nginx.port
    nginx.stop()


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _access_log(tmp_path: Path, lines: int = 1) -> list[dict]:
    """The access log's entries once it holds `lines` of them (nginx writes a line after
    the answer has gone, so a test can read before the last one is there)."""
    deadline = time.monotonic() + 5
    path = tmp_path / "access.log"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            break
        time.sleep(0.05)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_nginx
def test_proxy_sets_forwarding_headers_and_request_id(proxy, upstream, tmp_path):
    status, headers, _ = _request(
        proxy,
        "GET",
        "/api/tokens/summary",
        headers={"X-Forwarded-Proto": "https", "X-Request-ID": "client-id-123", "Host": "tokens.test"},
    )
    assert status == 200
    seen = _Upstream.seen[-1]["headers"]
    assert seen["x-forwarded-proto"] == "http", "client's X-Forwarded-Proto must be overwritten"
    assert seen["x-forwarded-for"].split(",")[-1].strip() == "127.0.0.1"
    assert seen["host"] == "tokens.test"
    assert seen["x-request-id"] == "client-id-123"
    entry = _access_log(tmp_path)[-1]
    assert entry["request_id"] == "client-id-123"
    assert entry["uri"] == "/api/tokens/summary" and entry["status"] == 200


@needs_nginx
def test_proxy_generates_request_id_when_missing_or_malformed(proxy, upstream):
    _request(proxy, "GET", "/api/tokens")
    _request(proxy, "GET", "/api/tokens", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = [record["headers"]["x-request-id"] for record in _Upstream.seen[-2:]]
    for value in generated:
        assert re.fullmatch(r"[0-9a-f]{32}", value), value
    assert generated[0] != generated[1]


@needs_nginx
@pytest.mark.parametrize("value", ["trace@edge/1+2=3", "-leading-dash", ".dot", "a" * 128, "a" * 129])
def test_nginx_passes_exactly_the_request_ids_the_service_accepts(proxy, upstream, value):
    """One rule for a client's X-Request-ID (service/request_context.VALID_ID): an id nginx passes
    and the service replaced would give nginx's log line and the service's two different ids."""
    _request(proxy, "GET", "/api/tokens", headers={"X-Request-ID": value})
    sent = _Upstream.seen[-1]["headers"]["x-request-id"]
    if VALID_ID.match(value):
        assert sent == value
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", sent), sent


@needs_nginx
@pytest.mark.parametrize("buffering", ["yes", "no"])
def test_the_stream_location_buffers_an_answer_that_ends_and_passes_a_held_one_through(
    proxy, upstream, tmp_path, buffering
):
    """The service says per answer (X-Accel-Buffering): a stream answer that ends at once (sync
    workers) is taken whole by nginx, so a client that reads slowly holds no worker; a held one
    goes through unbuffered, so nginx cannot keep its messages back (and then a client that
    does not read does hold its sender)."""
    with socket.create_connection(("127.0.0.1", proxy)) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(f"GET /api/events/stream?buffering={buffering} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        written = _Upstream.written.wait(5 if buffering == "yes" else 2)  # the client reads nothing
    assert written == (buffering == "yes")


@needs_nginx
def test_healthz_is_proxied_without_access_log(proxy, upstream, tmp_path):
    _request(proxy, "GET", "/api/tokens")
    status, _, _ = _request(proxy, "GET", "/healthz")
    assert status == 200
    assert _Upstream.seen[-1]["path"] == "/healthz"
    assert all(entry["uri"] != "/healthz" for entry in _access_log(tmp_path))


@needs_nginx
def test_metrics_allowed_from_loopback(proxy, upstream):
    status, _, _ = _request(proxy, "GET", "/metrics")
    assert status == 200
    assert _Upstream.seen[-1]["path"] == "/metrics"


@needs_nginx
@pytest.mark.parametrize("proxy", [{"METRICS_ALLOW": "allow 10.0.0.0/8;"}], indirect=True)
def test_metrics_denied_outside_allow_list(proxy, upstream):
    status, headers, body = _request(proxy, "GET", "/metrics")
    assert status == 403
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error_code"] == "FORBIDDEN"
    assert all(record["path"] != "/metrics" for record in _Upstream.seen)


@needs_nginx
def test_body_over_64k_gets_json_413(proxy, upstream):
    status, headers, body = _request(
        proxy,
        "POST",
        "/api/tokens/activate",
        body=b"x" * (64 * 1024 + 1),
        headers={"Content-Type": "application/json", "X-Request-ID": "big-body"},
    )
    assert status == 413
    error = json.loads(body)
    assert error["error_code"] == "PAYLOAD_TOO_LARGE" and error["request_id"] == "big-body"
    assert not _Upstream.seen


@needs_nginx
def test_json_is_gzipped(proxy, upstream):
    status, headers, body = _request(proxy, "GET", "/big", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("Content-Encoding") == "gzip"
    assert headers.get("Vary") == "Accept-Encoding"
    assert json.loads(gzip.decompress(body))["echo"]["path"] == "/big"


@needs_nginx
def test_json_stays_plain_for_a_client_without_gzip_or_under_1_kib(proxy, upstream):
    status, headers, body = _request(proxy, "GET", "/big")  # no Accept-Encoding
    assert status == 200 and "Content-Encoding" not in headers
    assert headers.get("Vary") == "Accept-Encoding"  # a cache must still tell the two answers apart
    assert json.loads(body)["echo"]["path"] == "/big"
    status, headers, body = _request(proxy, "GET", "/small", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and len(body) < 1024
    assert "Content-Encoding" not in headers  # gzip_min_length 1024: not worth a compression
    assert json.loads(body)["echo"]["path"] == "/small"


@needs_nginx
def test_upstream_down_gets_json_503(tmp_path):
    nginx = Nginx(tmp_path, [f"127.0.0.1:{free_port()}"]).start()
    try:
        status, headers, body = _request(nginx.port, "GET", "/api/tokens")
    finally:
        nginx.stop()
    assert status == 503
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error_code"] == "SERVICE_UNAVAILABLE"


# --- nginx's own errors, scheme headers, hosts, the access log --------------------------------


# Requests nginx refuses itself, each with the status it answers.
REFUSED_BY_NGINX = {
    "nul byte in the path": (raw_request("/api/tokens/%00", "Host: a"), 400),
    "bad percent-encoding": (raw_request("/api/%ZZ", "Host: a"), 400),
    "no Host in HTTP/1.1": (raw_request("/api/tokens/summary"), 400),
    "TRACE": (raw_request("/", "Host: a", method="TRACE"), 405),
    "CONNECT": (raw_request("a:443", "Host: a", method="CONNECT"), 400),
    "request line over 4k": (raw_request("/" + "a" * 5000, "Host: a"), 414),
    "header line over 4k": (raw_request("/", "Host: a", "X-A: " + "a" * 5000), 431),
    "headers over 4 x 4k": (raw_request("/", "Host: a", *[f"X-H{i}: {'v' * 60}" for i in range(400)]), 431),
    "X-Forwarded-For over 1k": (raw_request("/", "Host: a", *["X-Forwarded-For: " + "1" * 300] * 4), 431),
    "Content-Length not a number": (raw_request("/", "Host: a", "Content-Length: abc", method="POST"), 400),
    "two Content-Lengths": (
        raw_request("/", "Host: a", "Content-Length: 1", "Content-Length: 2", method="POST") + b"ab",
        400,
    ),
    "Content-Length and chunked": (
        raw_request("/", "Host: a", "Content-Length: 5", "Transfer-Encoding: chunked", method="POST")
        + b"0\r\n\r\n",
        400,
    ),
    "unknown Transfer-Encoding": (raw_request("/", "Host: a", "Transfer-Encoding: gzip", method="POST"), 501),
    "HTTP/2.0 in plain text": (raw_request("/", "Host: a", version="HTTP/2.0"), 505),
    "body over 64k": (
        raw_request("/api/tokens/activate", "Host: a", "Content-Length: 70000", method="POST") + b"x" * 70000,
        413,
    ),
    "an internal error page asked for directly": (raw_request("/_tokenpool_error/500", "Host: a"), 404),
}


def assert_nginx_error(status: int, headers: dict, body: bytes, expected: int) -> dict:
    """nginx's answer is the service's JSON error shape, with the service's names for `expected`."""
    from service.errors import HTTP_ERROR_CODES, status_name

    assert status == expected, (status, body[:300])
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)
    assert set(error) == ERROR_KEYS
    assert error["status"] == status_name(expected)
    assert error["error_code"] == HTTP_ERROR_CODES.get(expected, status_name(expected).upper())
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", error["error_id"])
    assert error["request_id"] == headers["x-request-id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", error["timestamp"]), error["timestamp"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    return error


@needs_nginx
@pytest.mark.parametrize("case", list(REFUSED_BY_NGINX))
def test_nginx_refuses_malformed_requests_in_the_json_error_shape(proxy, upstream, case):
    data, expected = REFUSED_BY_NGINX[case]
    assert_nginx_error(*raw_http(proxy, data), expected)
    assert not _Upstream.seen, "refused by nginx, never proxied"


@needs_nginx
def test_every_error_page_uses_the_service_names(tmp_path):
    """Each page of snippets/tokenpool-errors.conf names its code as service/errors.py does."""
    from service.errors import HTTP_ERROR_CODES, status_name

    text = (NGINX_DIR / "snippets" / "tokenpool-errors.conf").read_text()
    pages = re.findall(r"location = /_tokenpool_error/(\d+) \{.*?return (\d+) '(.*?)\\n';", text, re.S)
    assert {int(code) for code, _, _ in pages} >= {400, 403, 404, 405, 413, 414, 421, 431, 500, 503}
    for code, returned, body in pages:
        assert code == returned
        error = json.loads(body)
        assert error["status"] == status_name(int(code)), code
        assert error["error_code"] == HTTP_ERROR_CODES.get(int(code), status_name(int(code)).upper()), code
    for target in re.findall(r"error_page [\d ]+ (?:=\d+ )?(\S+);", text):
        assert target.removeprefix("/_tokenpool_error/") in {code for code, _, _ in pages}, target


SCHEME_HEADERS = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-Protocol": "ssl",
    "X-Forwarded-Scheme": "https",
    "X-Url-Scheme": "https",
    "Front-End-Https": "on",
    "Forwarded": "for=1.2.3.4;proto=https",
}


@needs_nginx
def test_every_scheme_header_is_set_or_removed(proxy, upstream):
    status, _, _ = _request(proxy, "GET", "/api/tokens/summary", headers=SCHEME_HEADERS)
    assert status == 200
    seen = _Upstream.seen[-1]["headers"]
    assert seen["x-forwarded-proto"] == "http"
    for name in SCHEME_HEADERS:
        if name != "X-Forwarded-Proto":
            assert name.lower() not in seen, name


@needs_nginx
def test_access_log_never_holds_the_query_string(proxy, upstream, tmp_path):
    secret = "tp_live_0123456789abcdef"
    for query in (f"api_key={secret}", f"state=active&key={secret}&token={secret}", f"x={secret}"):
        assert _request(proxy, "GET", f"/api/tokens?{query}")[0] == 200
    assert _request(proxy, "GET", f"/api/tokens/%00?api_key={secret}")[0] == 400
    entries = _access_log(tmp_path, lines=4)
    # nginx's workers log after answering, so two quick requests' lines may come in either order
    assert len(entries) == 4 and [e["uri"] for e in entries].count("/api/tokens") == 3
    assert secret not in (tmp_path / "access.log").read_text()


@needs_nginx
@pytest.mark.parametrize("proxy", [{"SERVER_NAME": "tokens.example.com"}], indirect=True)
def test_unknown_hosts_are_refused_when_server_name_is_set(proxy, upstream):
    status, _, _ = _request(proxy, "GET", "/api/tokens", headers={"Host": "tokens.example.com"})
    assert status == 200 and _Upstream.seen[-1]["headers"]["host"] == "tokens.example.com"
    _Upstream.seen.clear()
    for host in ("evil.example", "127.0.0.1", "tokens.example.com.evil.example"):
        for method, path in (("GET", "/api/tokens"), ("POST", "/api/tokens/activate"), ("GET", "/metrics")):
            assert_nginx_error(*raw_http(proxy, raw_request(path, f"Host: {host}", method=method)), 421)
    assert not _Upstream.seen
    # probes that address nginx by IP still reach /healthz
    assert _request(proxy, "GET", "/healthz", headers={"Host": "10.1.2.3"})[0] == 200


@needs_nginx
def test_default_server_name_serves_any_host(proxy, upstream):
    for host in ("tokens.example.com", "127.0.0.1", "localhost:8080"):
        assert _request(proxy, "GET", "/api/tokens", headers={"Host": host})[0] == 200
