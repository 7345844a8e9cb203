"""Windowed request, query, error and token figures: in Redis (cluster) or in process.

Figures are per-minute buckets (a hash per minute, kept a day) plus capped
lists of recent slow requests, slow queries and errors. A request writes its
figures in one pipelined round trip; reads aggregate the buckets of a window.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import json
import logging
import threading
import time
import weakref
from collections import Counter, deque
from typing import Protocol

import redis as redis_lib
from typing_extensions import override  # typing.override from Python 3.12 on

from ..stream_threads import normal_priority

log = logging.getLogger("tokenpool.monitoring")

# latency histogram bucket upper bounds, in ms (the last is open-ended)
BOUNDS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, float("inf"))
LIST_CAP = 200
BUCKET_TTL_SECONDS = 25 * 3600
LISTS = ("slow_requests", "slow_queries", "errors")


def bucket_of(duration_ms: float) -> int:
    """The index in BOUNDS_MS of the latency bucket holding `duration_ms` (milliseconds)."""
    return bisect.bisect_left(BOUNDS_MS, duration_ms)


def request_fields(route: str, status: int, duration_ms: float) -> tuple[str, ...]:
    """The bucket fields one request adds 1 to (`Counter.update` takes them as they are)."""
    return _request_fields(route, status, bucket_of(duration_ms))


@functools.lru_cache(maxsize=4096)  # routes are templates: a few dozen routes x statuses x buckets
def _request_fields(route: str, status: int, bucket: int) -> tuple[str, ...]:
    fields = ["requests", f"lat|{bucket}", f"route|{route}|n", f"route|{route}|lat|{bucket}"]
    if status >= 500:
        fields += ["errors", f"route|{route}|errors"]
    elif status >= 400:
        fields.append("client_errors")
    if status == 429:
        fields.append("rl|refused")
    return tuple(fields)


class Figures:
    """What one request (or one background run) adds: bucket increments and list entries."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.entries: dict[str, list[dict]] = {}  # kind (one of LISTS) -> entries, only kinds with some

    def add_entry(self, kind: str, entry: dict) -> None:
        """Add `entry` to the recent list `kind` (one of LISTS)."""
        self.entries.setdefault(kind, []).append(entry)

    def __bool__(self) -> bool:
        return bool(self.counts) or bool(self.entries)


class FigureStore(Protocol):
    """A figure store: MemoryStore (this process), RedisStore (the cluster) or a BufferedStore over one.

    `minute` is whole minutes since the Unix epoch (`current_minute`); `kind` is one of LISTS.
    """

    scope: str  # "process" or "cluster": whose figures the answers hold

    def write(self, minute: int, figures: Figures) -> None:
        """Add `figures` to the bucket of `minute` and their entries to the recent lists.

        A Redis outage is logged once and the figures are dropped: never raises for it.
        """

    def buckets(self, minutes: list[int]) -> list[Counter]:
        """One Counter per minute of `minutes`, in that order (empty for a minute without figures).

        Raises redis.RedisError when the store is Redis and Redis does not answer.
        """
        ...

    def recent(self, kind: str, limit: int) -> list[dict]:
        """The `limit` most recent entries of `kind`, newest first. Raises redis.RedisError like `buckets`."""
        ...

    def clear(self) -> None:
        """Forget every figure and entry (for tests)."""


class MemoryStore(FigureStore):
    """Figures of this process only."""

    scope = "process"

    def __init__(self) -> None:
        self._buckets: dict[int, Counter] = {}
        self._lists: dict[str, deque[dict]] = {name: deque(maxlen=LIST_CAP) for name in LISTS}
        self._lock = threading.Lock()

    @override
    def write(self, minute: int, figures: Figures) -> None:
        with self._lock:
            self._buckets.setdefault(minute, Counter()).update(figures.counts)
            for kind, entries in figures.entries.items():
                self._lists[kind].extendleft(entries)
            for old in [m for m in self._buckets if m < minute - BUCKET_TTL_SECONDS // 60]:
                del self._buckets[old]

    @override
    def buckets(self, minutes: list[int]) -> list[Counter]:
        with self._lock:
            return [Counter(self._buckets.get(m, {})) for m in minutes]

    @override
    def recent(self, kind: str, limit: int) -> list[dict]:
        with self._lock:
            return list(self._lists[kind])[:limit]

    @override
    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
            for entries in self._lists.values():
                entries.clear()


class RedisStore(FigureStore):
    """Figures shared by every worker and instance, in Redis."""

    scope = "cluster"

    def __init__(self, client: redis_lib.Redis, prefix: str = "tokenpool:mon") -> None:
        """`client`: from redis_connect.redis_client (any REDIS_URL form, bounded timeouts)."""
        self.client = client
        self.prefix = prefix
        self._failing = False

    def _key(self, *parts) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    @override
    def write(self, minute: int, figures: Figures) -> None:
        pipe = self.client.pipeline(transaction=False)
        if figures.counts:
            key = self._key("m", minute)
            for field, n in figures.counts.items():
                pipe.hincrby(key, field, n)
            pipe.expire(key, BUCKET_TTL_SECONDS)
        for kind, entries in figures.entries.items():
            if entries:
                pipe.lpush(self._key(kind), *[json.dumps(e) for e in entries])
                pipe.ltrim(self._key(kind), 0, LIST_CAP - 1)
        try:
            pipe.execute()
            if self._failing:
                log.warning("monitoring store: Redis answers again")
                self._failing = False
        except redis_lib.RedisError as exc:  # figures are best effort; the request is not
            if not self._failing:
                log.warning("monitoring store: Redis write failed (%s); figures are lost meanwhile", exc)
                self._failing = True

    @override
    def buckets(self, minutes: list[int]) -> list[Counter]:
        pipe = self.client.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(self._key("m", m))
        return [Counter({k.decode(): int(v) for k, v in raw.items()}) for raw in pipe.execute()]

    @override
    def recent(self, kind: str, limit: int) -> list[dict]:
        entries: list = self.client.lrange(self._key(kind), 0, limit - 1)  # type: ignore[assignment]  # sync client
        return [json.loads(e) for e in entries]

    @override
    def clear(self) -> None:
        keys = list(self.client.scan_iter(self._key("*"), count=1000))
        if keys:
            self.client.delete(*keys)


_BUFFERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Send what is still buffered when the process ends (quietly: logging may be gone)."""
    log.disabled = True
    for buffered in list(_BUFFERS):
        try:
            buffered.flush()
        except Exception:
            pass


class BufferedStore(FigureStore):
    """Merges writes in memory and sends them to `inner` every `interval` seconds.

    Requests then cost no Redis round trip at all; a worker's figures reach the
    cluster view within `interval`. Reads flush this process's buffer first.
    """

    def __init__(self, inner: FigureStore, interval: float) -> None:
        self.inner = inner
        self.scope = inner.scope
        self.interval = interval
        self._pending: dict[int, Figures] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _BUFFERS.add(self)

    @override
    def write(self, minute: int, figures: Figures) -> None:
        with self._lock:
            pending = self._pending.get(minute)
            if pending is None:
                pending = self._pending[minute] = Figures()
            pending.counts.update(figures.counts)
            for kind, entries in figures.entries.items():
                pending.entries.setdefault(kind, []).extend(entries)
            if self._thread is None:  # started in the worker, after gunicorn's fork
                self._thread = threading.Thread(target=self._loop, name="monitoring-flush", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Send what is buffered to the inner store now (a Redis outage is logged there, not raised)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for minute, figures in sorted(pending.items()):
            self.inner.write(minute, figures)

    def _loop(self) -> None:
        normal_priority()  # started by the first request that records figures: maybe a stream's
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # never let the flusher die; the next round retries
                log.exception("monitoring flush failed")

    @override
    def buckets(self, minutes: list[int]) -> list[Counter]:
        self.flush()
        return self.inner.buckets(minutes)

    @override
    def recent(self, kind: str, limit: int) -> list[dict]:
        self.flush()
        return self.inner.recent(kind, limit)

    @override
    def clear(self) -> None:
        self.flush()
        self.inner.clear()


def current_minute(now: float | None = None) -> int:
    """Whole minutes since the Unix epoch at `now` (seconds since the epoch; None: the current time)."""
    return int((now if now is not None else time.time()) // 60)


def window_minutes(window: int, now: float | None = None) -> list[int]:
    """The `window` minutes (as `current_minute` counts them) that end with the current one, oldest first."""
    end = current_minute(now)
    return list(range(end - window + 1, end + 1))
