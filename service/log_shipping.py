"""Optional shipping of the JSON log lines to Logstash or Fluent over TCP (`LOGSTASH_HOST`).

Each line, the same JSON as stdout's, goes newline-delimited over one TCP
connection: Logstash's `tcp` input with the `json_lines` codec, Fluent Bit's
`tcp` input with `Format json`, or Fluentd's `in_tcp` with a `json` parser
take it as it is.

A request never waits for the collector: its records go on a bounded queue
(`LOGSTASH_QUEUE_SIZE`, logging.handlers.QueueHandler) without blocking, and
a thread (QueueListener) sends them. A record that finds the queue full is
dropped (`queue_full`); while the collector is down (refused, timed out,
reset) the thread drops what it takes from the queue (`collector_down`) and
tries to connect again after 1 s, doubling up to 30 s. Drops are counted in
`tokenpool_log_lines_dropped_total{reason}`. Delivery is at most once: a line
the kernel accepted just before the collector went away is lost without
notice, and a send that times out may leave a cut line, which the collector
rejects as bad JSON. stdout and the log files still get every line.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter

DROP_REASONS = ("queue_full", "collector_down")
MAX_BACKOFF_SECONDS = 30.0

_drops: Counter = Counter()  # this process's drops by reason, whether or not metrics exist
_sink = None  # the app's prometheus Counter with a `reason` label, once metrics are built
_lock = threading.Lock()


def count_drop(reason: str) -> None:
    """One line not shipped, for `reason` (one of DROP_REASONS)."""
    with _lock:
        _drops[reason] += 1
        sink = _sink
    if sink is not None:
        sink.labels(reason).inc()


def report_drops_to(counter) -> None:
    """Count drops in `counter` (labels: reason) from now on, with the drops seen so far."""
    global _sink
    with _lock:
        _sink = counter
        earlier = dict(_drops)
    for reason in DROP_REASONS:
        counter.labels(reason)  # every reason exported, at 0 until it happens
        if earlier.get(reason):
            counter.labels(reason).inc(earlier[reason])


def drops() -> dict[str, int]:
    """Lines this process did not ship, by reason."""
    with _lock:
        return {reason: _drops[reason] for reason in DROP_REASONS}


class TcpJsonLines(logging.Handler):
    """Sends each formatted record as one line over a TCP connection it keeps open.

    Runs in the QueueListener's thread only. Never raises and never prints:
    a failure closes the connection, drops the record and counts it.
    """

    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        super().__init__()
        self.address, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None
        self.retry_at, self.backoff = 0.0, 1.0

    def emit(self, record: logging.LogRecord) -> None:
        """Send one line to the collector; never blocks longer than the timeout and never raises.

        A line that cannot be sent (collector down, backing off) is dropped and counted.
        """
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            count_drop("collector_down")
            return
        if self.sock is None and not self._connect():
            count_drop("collector_down")
            return
        assert self.sock is not None  # _connect() opened it
        try:
            self.sock.sendall(line)
        except OSError:
            self._disconnect()
            count_drop("collector_down")
            return
        self.backoff = 1.0

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self.retry_at:
            return False
        try:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
        except OSError:
            self.retry_at = now + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
            return False
        return True

    def _disconnect(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)

    def close(self) -> None:
        """Close the connection to the collector, if open."""
        self.acquire()
        try:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
        finally:
            self.release()
        super().close()
