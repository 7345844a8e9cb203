"""Event-stream clients for `bench/run.py`, as browsers' EventSource behaves.

    python bench/stream_clients.py [--reconnect] http://127.0.0.1:PORT/api/events/stream 100 12

Held (the default gunicorn worker, or gthread with EVENT_STREAM_SECONDS > 0):
opens N connections, asks each for the stream and reads what comes for the
given seconds (counting bytes and `id:` lines); a connection the server closes
early or answers with another status counts as failed.

`--reconnect` (plain sync workers, or EVENT_STREAM_SECONDS=0: each answer
carries the events there are and ends): each of N clients asks, reads the answer to its
end, waits the answer's `retry:` interval and only then connects again with
the `Last-Event-ID` it reached, as EventSource does. (wrk cannot: with a
`delay()` it connects first and waits before sending, which holds a sync
worker for the whole interval, a client no browser is.) A non-200 answer or a
connection error counts as failed.

Prints one BENCH_JSON line: {"requests", "failed", "bytes", "messages"}.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

RETRY = re.compile(rb"^retry: (\d+)", re.M)


def held(host: str, port: int, request: bytes, clients: int, seconds: float) -> dict:
    selector = selectors.DefaultSelector()
    failed = 0
    heads: dict[socket.socket, bytes] = {}
    for _ in range(clients):
        try:
            sock = socket.create_connection((host, port), timeout=5)
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
            if len(heads[sock]) < 12:
                heads[sock] += data
                if len(heads[sock]) >= 12 and not heads[sock].startswith(b"HTTP/1.1 200"):
                    failed += 1
                    selector.unregister(sock)
                    sock.close()
                    del heads[sock]
                    continue
            received += len(data)
            messages += data.count(b"\nid: ") + data.startswith(b"id: ")
    for sock in heads:
        sock.close()
    return {"requests": clients, "failed": failed, "bytes": received, "messages": messages}


def reconnecting(host: str, port: int, request: bytes, clients: int, seconds: float) -> dict:
    totals = {"requests": 0, "failed": 0, "bytes": 0, "messages": 0}
    lock = threading.Lock()
    ends = time.monotonic() + seconds

    def client() -> None:
        last, retry = None, 1.0
        while time.monotonic() < ends:
            resume = b"" if last is None else b"Last-Event-ID: " + last + b"\r\n"
            sent = request[:-2] + resume + b"\r\n"  # the header goes before the blank line
            chunks, ok = [], False
            try:
                with socket.create_connection((host, port), timeout=10) as sock:
                    sock.sendall(sent)
                    while chunk := sock.recv(262144):
                        chunks.append(chunk)
            except OSError:
                pass
            answer = b"".join(chunks)
            ok = answer.startswith(b"HTTP/1.1 200")
            # the client's own work kept small (it shares the cores with the server): the last
            # `id:` line by a search from the end, the messages by counting, not a regex over all
            found = answer.rfind(b"\nid: ")
            if found >= 0:
                last = answer[found + 5 : answer.index(b"\n", found + 5)]
            if match := RETRY.search(answer, 0, 4096):
                retry = int(match.group(1)) / 1000
            with lock:
                totals["requests"] += 1
                totals["failed"] += not ok
                totals["bytes"] += len(answer)
                totals["messages"] += answer.count(b"\nid: ")
            time.sleep(max(0.0, min(retry, ends - time.monotonic())))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return totals


def main() -> int:
    args = sys.argv[1:]
    reconnect = args[0] == "--reconnect"
    url, clients, seconds = args[reconnect], int(args[reconnect + 1]), float(args[reconnect + 2])
    parts = urlsplit(url)
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
        + ("Connection: close\r\n" if reconnect else "")
        + "\r\n"
    ).encode()
    run = reconnecting if reconnect else held
    print("BENCH_JSON " + json.dumps(run(parts.hostname, parts.port, request, clients, seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
