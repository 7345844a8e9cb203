"""Every figure store keeps the FigureStore contract: windows of buckets, recent lists newest first."""

from __future__ import annotations

import os
import sys
import threading
import uuid

import pytest
import redis

from service.monitoring.figures import aggregate
from service.monitoring.store import (
    LIST_CAP,
    BufferedStore,
    Figures,
    FigureStore,
    MemoryStore,
    RedisStore,
    request_fields,
    window_minutes,
)
from service.stream_threads import lower_priority
from tests.procs import wait_for

NOW = 1_900_000_000.0
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "redis", "buffered"])
def store(request):
    if request.param == "memory":
        yield MemoryStore()
        return
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    inner = RedisStore(client, prefix=f"tokenpool-test:{uuid.uuid4().hex}")  # nobody else's keys
    chosen: FigureStore = inner if request.param == "redis" else BufferedStore(inner, interval=3600)
    yield chosen
    inner.clear()
    client.close()


def one_request(entry: dict | None = None) -> Figures:
    figures = Figures()
    figures.counts.update(request_fields("/r", 200, 1.0))
    if entry is not None:
        figures.add_entry("errors", entry)
    return figures


def test_buckets_follow_the_window_and_lists_are_newest_first(store):
    minute = window_minutes(1, NOW)[0]
    for i in range(3):  # minutes in the order time gives them
        store.write(minute - 2 + i, one_request({"n": i}))
    assert [b["requests"] for b in store.buckets(window_minutes(2, NOW))] == [1, 1]
    assert aggregate(store.buckets(window_minutes(5, NOW)))["requests"] == 3
    assert store.recent("errors", 2) == [{"n": 2}, {"n": 1}]
    assert store.recent("slow_queries", 5) == []


def test_writes_to_one_minute_add_up(store):
    minute = window_minutes(1, NOW)[0]
    for _ in range(4):
        store.write(minute, one_request())
    (bucket,) = store.buckets([minute])
    assert bucket["requests"] == 4 and bucket["route|/r|n"] == 4


def test_recent_lists_are_capped(store):
    minute = window_minutes(1, NOW)[0]
    figures = Figures()
    for i in range(LIST_CAP + 5):
        figures.add_entry("errors", {"n": i})
    store.write(minute, figures)
    kept = store.recent("errors", LIST_CAP + 5)
    assert len(kept) == LIST_CAP and kept[0] == {"n": LIST_CAP + 4}


def test_clear_forgets_everything(store):
    minute = window_minutes(1, NOW)[0]
    store.write(minute, one_request({"n": 1}))
    store.clear()
    assert store.recent("errors", 10) == []
    assert aggregate(store.buckets(window_minutes(5, NOW)))["requests"] == 0


def test_scope_says_whose_figures(store):
    assert store.scope == ("process" if isinstance(store, MemoryStore) else "cluster")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_flush_thread_runs_at_the_process_priority_whoever_starts_it():
    """The first write starts the flusher; when that write comes from a held stream's thread
    (nice +10), the flusher must not keep that thread's priority for the worker's life."""
    store = BufferedStore(MemoryStore(), interval=3600)

    def write_as_stream_work() -> None:
        lower_priority()
        store.write(0, one_request())

    writer = threading.Thread(target=write_as_stream_work)
    writer.start()
    writer.join()
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    try:
        wait_for(
            lambda: os.getpriority(os.PRIO_PROCESS, store._thread.native_id) == base,
            2,
            what="the flusher at the process's priority",
        )
    finally:
        store._stop.set()
        store._thread.join(2)
