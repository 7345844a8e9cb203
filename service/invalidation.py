"""Cache invalidation across every worker and instance: one generation number in the database.

Each process keeps caches of database facts (API key lookups, the detailed
health report). A change that must reach all of them at once (a key created
or revoked, `POST /api/monitoring/cache/clear`) calls `bump` in its own
transaction, so the change and the bump commit together. Each process reads
the number at most every `CHECK_SECONDS`, only when it is about to answer
from a cache, and drops its caches when the number moved: a revocation takes
effect everywhere within CHECK_SECONDS plus one read, without a message bus.
While the number cannot be read (database down), the caches are dropped on
every check, so nothing stale is served for longer than CHECK_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Connection, insert, select, update

from .db import run_transaction
from .models import CacheGeneration

log = logging.getLogger("tokenpool.invalidation")
generations = CacheGeneration.__table__
CHECK_SECONDS = 0.5
NEVER = object()  # not read yet


def bump(conn: Connection) -> None:
    """Move the generation on: every process drops its caches within CHECK_SECONDS of the commit."""
    moved = conn.execute(
        update(generations).where(generations.c.id == 1).values(generation=generations.c.generation + 1)
    ).rowcount
    if not moved:
        conn.execute(insert(generations).values(id=1, generation=1))


READ = select(generations.c.generation).where(generations.c.id == 1)  # built once (db.AutocommitConnection)


def read(conn) -> int | None:
    """The current generation (None if the row is missing)."""
    row = conn.execute(READ).first()
    return None if row is None else row[0]


class Generation:
    """This process's view of the generation, and the caches to drop when it moves."""

    def __init__(self, check_seconds: float = CHECK_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.check_seconds = check_seconds
        self.clock = clock  # seconds, monotonic; tests move it by hand
        self._drops: list[Callable[[], None]] = []
        self._seen: int | None | object = NEVER
        self._next_check = 0.0
        self._failing = False
        self._lock = threading.Lock()

    def on_change(self, drop: Callable[[], None]) -> None:
        """Call `drop()` (forget cached entries) whenever the generation moves."""
        self._drops.append(drop)

    def sync(self) -> None:
        """Before answering from a cache: at most every check_seconds, read the number, drop on change.

        Costs a clock read on most calls; one single-statement query otherwise.
        Another thread already checking is not waited for.
        """
        now = self.clock()
        if now < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.check_seconds
            try:
                value = run_transaction(read, attempts=1, single_statement=True)
                if self._failing:
                    log.warning("cache generation readable again")
                    self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("cache generation unreadable (%s): caches dropped at every check", exc)
                    self._failing = True
                value = None
            moved = value is None or (value != self._seen and self._seen is not NEVER)
            self._seen = value
            if moved:  # a first read has nothing older to compare: what was cached meanwhile is as new
                for drop in self._drops:
                    drop()
        finally:
            self._lock.release()


def bump_now() -> None:
    """`bump` in a transaction of its own."""
    run_transaction(bump)
