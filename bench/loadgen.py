"""Fixed-rate (open-loop) HTTP load, like wrk2: latency counted from the *scheduled* send time.

wrk keeps N connections busy (closed loop), so it can only measure latency at
saturation. To know the latency at a given rate we send requests on a fixed
schedule whatever the server does, and count each request's latency from the
moment it should have been sent: a stalled server cannot hide its queue
(no coordinated omission). One new connection per request, `Connection: close`,
as wrk does against gunicorn's sync workers.

    .venv/bin/python bench/loadgen.py --rate 400 --duration 10 --activate \\
        http://127.0.0.1:8000/api/tokens/activate
"""

from __future__ import annotations

import argparse
import json
import math
import selectors
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def request_factory(url: str, *, activate: bool) -> tuple[str, int, Callable[[], bytes]]:
    """(host, port, make_request): a GET of the URL, or a POST with a fresh random user_id."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"Host: {host}:{port}\r\nConnection: close\r\nAccept: application/json\r\n"
    if not activate:
        raw = f"GET {target} HTTP/1.1\r\n{head}\r\n".encode()
        return host, port, lambda: raw

    def make() -> bytes:
        body = json.dumps({"user_id": str(uuid.uuid4())}).encode()
        return (
            f"POST {target} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    return host, port, make


def _drive(host, port, make, rate: float, duration: float, max_outstanding: int, timeout: float):
    """Send on schedule with non-blocking sockets and one selector.

    Cheaper per request than asyncio streams (measured: 0.27 of a core at
    350 requests/s with asyncio), which matters when the driver shares the
    cores with the server it measures.
    """
    total = int(rate * duration)
    selector = selectors.DefaultSelector()
    inflight: dict[socket.socket, list] = {}  # sock -> [scheduled, sent, payload, received, deadline]
    out: list = []
    dropped = 0
    start = time.perf_counter() + 0.05
    i = 0

    def finish(sock: socket.socket, status: int) -> None:
        scheduled, sent, _payload, _data, _deadline = inflight.pop(sock)
        selector.unregister(sock)
        sock.close()
        out.append((scheduled, sent, time.perf_counter(), status))

    while i < total or inflight:
        now = time.perf_counter()
        while i < total and start + i / rate <= now:  # every request that is due, late ones included
            if len(inflight) >= max_outstanding:
                dropped += 1  # the server is hopelessly behind: count, do not pile up
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((host, port))
                inflight[sock] = [start + i / rate, now, make(), bytearray(), now + timeout]
                selector.register(sock, selectors.EVENT_WRITE)
            i += 1
        wait = min(max(start + i / rate - time.perf_counter(), 0.0), 0.005) if i < total else 0.005
        for key, events in selector.select(wait):
            sock = key.fileobj
            state = inflight[sock]
            try:
                if events & selectors.EVENT_WRITE:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        finish(sock, 0)
                        continue
                    sock.sendall(state[2])  # a small request: fits the socket buffer
                    selector.modify(sock, selectors.EVENT_READ)
                else:
                    chunk = sock.recv(65536)
                    if chunk:
                        state[3] += chunk
                    else:  # the server closes after the response
                        data = state[3]
                        finish(sock, int(data[9:12]) if data.startswith(b"HTTP/") else 0)
            except (OSError, ValueError):
                finish(sock, 0)
        now = time.perf_counter()
        for sock in [s for s, state in inflight.items() if state[4] < now]:
            finish(sock, 0)
    selector.close()
    return start, out, dropped


def run_fixed_rate(
    url: str,
    *,
    rate: float,
    duration: float,
    activate: bool,
    max_outstanding: int = 512,
    timeout: float = 10.0,
) -> dict:
    """Send `rate` requests/s for `duration` s; return rates, percentiles (ms) and status counts."""
    host, port, make = request_factory(url, activate=activate)
    start, out, dropped = _drive(host, port, make, rate, duration, max_outstanding, timeout)
    ok = [r for r in out if 200 <= r[3] < 300]
    corrected = sorted((end - scheduled) * 1000 for scheduled, _sent, end, _ in ok)
    service = sorted((end - sent) * 1000 for _scheduled, sent, end, _ in ok)
    elapsed = (max(r[2] for r in out) - start) if out else duration
    statuses = Counter(str(r[3]) for r in out)

    def pct(values):
        return {f"p{q}".replace(".", ""): percentile(values, q) for q in (50, 90, 99, 99.9)} | {
            "max": values[-1] if values else None
        }

    return {
        "url": url,
        "target_rate": rate,
        "duration_s": duration,
        "sent": len(out),
        "ok": len(ok),
        "dropped": dropped,
        "statuses": dict(statuses),
        "achieved_rate": len(ok) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": pct(corrected),  # from the scheduled send time (what a user waits)
        "service_ms": pct(service),  # from the actual send (what wrk would show)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--activate", action="store_true", help='POST {"user_id": random UUID}')
    args = parser.parse_args()
    result = run_fixed_rate(args.url, rate=args.rate, duration=args.duration, activate=args.activate)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
