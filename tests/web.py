"""HTTP to real processes (gunicorn, nginx, throwaway servers): the one set of client helpers.

Every request opens a new connection (so any worker may answer, and a killed or
draining worker shows up as a connection error of exactly the requests it held),
and a 4xx or 5xx is an answer, not an exception. Header names are
case-insensitive.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

from werkzeug.datastructures import Headers


class Response:
    def __init__(self, status: int, headers: Headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def request(
    target: int | str,
    method: str,
    path: str = "",
    body: bytes | dict | None = None,
    headers: dict | None = None,
    source: str = "127.0.0.1",
    timeout: float = 10,
) -> Response:
    """One request on a new connection to `target` (a port on 127.0.0.1, or a base URL).

    A dict `body` is sent as JSON. `source` is the loopback address to send from
    (any of 127.0.0.0/8). Raises OSError / http.client.HTTPException when no answer comes.
    """
    host, port = "127.0.0.1", target
    if isinstance(target, str):
        parts = urlsplit(target)
        host, port, path = parts.hostname, parts.port, parts.path + path
        if parts.query:
            path += "?" + parts.query
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path or "/", body=body, headers=headers)
        answer = conn.getresponse()
        return Response(answer.status, Headers(answer.getheaders()), answer.read())
    finally:
        conn.close()


def http_get(url: str, timeout: float = 5, headers: dict | None = None) -> tuple[int, bytes, Headers]:
    """(status, body, headers) of a GET of `url`."""
    answer = request(url, "GET", headers=headers, timeout=timeout)
    return answer.status, answer.body, answer.headers


def call(
    base: str, method: str, path: str, body: dict | None = None, timeout: float = 30
) -> tuple[int, dict]:
    """(status, JSON body or {}) of one request; a body that is not JSON comes back as {"raw": ...}."""
    answer = request(base, method, path, body, headers={"Connection": "close"}, timeout=timeout)
    try:
        return answer.status, answer.json() if answer.body else {}
    except ValueError:
        return answer.status, {"raw": answer.body[:200].decode(errors="replace")}


def raw_http(port: int, data: bytes) -> tuple[int, dict, bytes]:
    """Send bytes as they are (http.client refuses to write malformed requests); read the one answer.

    Returns (status, headers with lower-case names, body); the request should say `Connection: close`.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    return int(lines[0].split()[1]), headers, body


def raw_request(path: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """A request's bytes: these header lines only (no Host unless given), then `Connection: close`."""
    lines = [f"{method} {path} {version}", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")
