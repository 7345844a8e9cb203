"""Held event streams for `bench/run.py` (gthread workers, EVENT_STREAM_SECONDS > 0).

    python bench/stream_clients.py http://127.0.0.1:PORT/api/events/stream 100 12

Opens N connections, asks each for the stream, reads what comes for the given
seconds (counting bytes and `id:` lines, parsing nothing else) and prints one
BENCH_JSON line: {"requests", "failed", "bytes", "messages"}. A connection the
server closes early or answers with another status counts as failed.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from urllib.parse import urlsplit


def main() -> int:
    url, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    parts = urlsplit(url)
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    selector = selectors.DefaultSelector()
    failed = 0
    heads: dict[socket.socket, bytes] = {}
    for _ in range(clients):
        try:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            sock.sendall(request)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            heads[sock] = b""
        except OSError:
            failed += 1
    received = messages = 0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends and heads:
        for key, _ in selector.select(timeout=max(0.0, ends - time.monotonic())):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:  # closed before its time
                failed += 1
                selector.unregister(sock)
                sock.close()
                del heads[sock]
                continue
            if heads[sock] is not None and len(heads[sock]) < 12:
                heads[sock] += data
                if len(heads[sock]) >= 12:
                    if not heads[sock].startswith(b"HTTP/1.1 200"):
                        failed += 1
                        selector.unregister(sock)
                        sock.close()
                        del heads[sock]
                        continue
            received += len(data)
            messages += data.count(b"\nid: ") + data.startswith(b"id: ")
    for sock in heads:
        sock.close()
    print(
        "BENCH_JSON "
        + json.dumps({"requests": clients, "failed": failed, "bytes": received, "messages": messages})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
