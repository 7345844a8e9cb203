"""Shipping log lines to Logstash/Fluent over TCP: a real listener, a collector that is down or stuck."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from service.config import ConfigError
from service.log_shipping import drops
from service.logging_setup import flush_logs
from tests.conftest import make_app
from tests.procs import free_port, wait_for


class Collector:
    """A TCP listener that keeps every newline-delimited JSON line it receives."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lines: list[dict] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as stream:
            for raw in stream:
                self.lines.append(json.loads(raw))

    def close(self) -> None:
        self.server.close()


def sample(metrics: str, reason: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'tokenpool_log_lines_dropped_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no sample for {reason}")


def test_lines_reach_a_tcp_collector_as_json_lines(sqlite_url):
    collector = Collector()
    try:
        app = make_app(sqlite_url, LOG_LEVEL="INFO", LOGSTASH_HOST="127.0.0.1", LOGSTASH_PORT=collector.port)
        client = app.test_client()
        for n in range(20):
            assert client.get("/api", headers={"X-Request-ID": f"ship-{n}"}).status_code == 200
        shipped = lambda: {x.get("request_id") for x in collector.lines if x["logger"] == "tokenpool.access"}  # noqa: E731
        wait_for(lambda: {f"ship-{n}" for n in range(20)} <= shipped(), 10, what="20 access lines shipped")
        line = next(x for x in collector.lines if x.get("request_id") == "ship-0")
        assert (line["service"], line["environment"], line["method"], line["path"]) == (
            "tokenpool",
            "testing",
            "GET",
            "/api",
        )
        assert line["status"] == 200 and line["level"] == "INFO" and line["timestamp"]
        metrics = client.get("/metrics").get_data(as_text=True)
        assert sample(metrics, "queue_full") == 0 and sample(metrics, "collector_down") == 0
    finally:
        collector.close()


def test_a_collector_that_is_down_costs_requests_nothing_and_lines_are_counted(sqlite_url):
    before = drops()["collector_down"]
    app = make_app(sqlite_url, LOG_LEVEL="INFO", LOGSTASH_HOST="127.0.0.1", LOGSTASH_PORT=free_port())
    client = app.test_client()
    slowest = 0.0
    for _ in range(50):
        started = time.perf_counter()
        assert client.get("/api").status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.5  # below the sender's 2 s timeout: no request waited on the collector
    flush_logs()
    assert drops()["collector_down"] - before >= 50
    assert sample(client.get("/metrics").get_data(as_text=True), "collector_down") >= 50


def test_a_stuck_collector_never_blocks_the_caller_and_a_full_queue_drops(sqlite_url):
    stuck = socket.create_server(("127.0.0.1", 0), backlog=1)  # accepts connections, never reads
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = drops()["queue_full"]
    try:
        make_app(
            sqlite_url,
            LOG_LEVEL="INFO",
            LOGSTASH_HOST="127.0.0.1",
            LOGSTASH_PORT=stuck.getsockname()[1],
            LOGSTASH_QUEUE_SIZE=10,
        )
        log = logging.getLogger("tokenpool.test_shipping")
        slowest, big = 0.0, "x" * 20_000
        for n in range(1000):  # 20 MB: more than any socket buffer holds
            started = time.perf_counter()
            log.info("line %d %s", n, big)
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 1.5  # the sender waits 2 s on a stuck socket; the caller never does
        assert drops()["queue_full"] - before > 0
    finally:
        stuck.close()


def test_bad_logstash_port_is_refused(monkeypatch):
    monkeypatch.setenv("LOGSTASH_PORT", "70000")
    with pytest.raises(ConfigError, match="^LOGSTASH_PORT must be a TCP port"):
        make_app("sqlite://")
