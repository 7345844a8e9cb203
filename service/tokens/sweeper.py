"""The token manager: a background thread per worker that sweeps expired leases and
hands the leases that expire in `queue` pools to their waiting tickets.

Every worker of every instance may run one; `service.sweep` lets only one of
them work per interval (the `sweeper_state` row is the lock), so running many
is safe and cheap. It starts with the process's other background thread
(service/background.py: in a gunicorn worker once it loaded the app, never in
CLI commands or the gunicorn master); it sweeps at once, then every interval,
and stops at shutdown.

The queue's scheduler runs in the same thread: after every wake it hands
expired leases over (`queue.run_due`, safe with any number of runners: the
queue lock and SKIP LOCKED) and sleeps until the next end of a lease or of a
ticket's wait in a pool where tickets wait, so a hand-over follows an expiry
within milliseconds rather than at the next sweep. A process that queues a
ticket wakes its own thread (`wake_scheduler`); the others look for waiting
tickets every `IDLE_SCHEDULER_SECONDS` while they know of none, so a ticket
whose process died (or stopped its thread) is still served within a second of
its lease's end.
"""

from __future__ import annotations

import logging
import random
import time

from sqlalchemy.exc import SQLAlchemyError

from ..background import BackgroundThread
from ..clock import token_time
from ..db import run_transaction
from ..events import outbox
from ..retention import run_prune
from ..state import app_state
from ..telemetry import emit, timed
from . import queue, service

log = logging.getLogger("tokenpool.sweeper")
HAND_OVER_MARGIN_SECONDS = 0.005
# with no ticket waiting, how often the scheduler looks again (one short transaction)
IDLE_SCHEDULER_SECONDS = 1.0

# at most this many batches of each table per sweep: 200 x 2000 rows every CHECK_INTERVAL_SECONDS
PRUNE_BATCHES_PER_SWEEP = 200


def run_sweep(app, *, min_gap_seconds: float = 0, budget_seconds: float | None = None) -> service.SweepResult:
    """One sweep inside `app`, with its telemetry. Raises what the database raises.

    `budget_seconds`: how long it may wait for the database in all (None: no deadline).
    """
    with app.app_context(), timed() as elapsed:
        try:
            result = run_transaction(
                service.sweep,
                now=token_time(app),
                min_gap_seconds=min_gap_seconds,
                budget_seconds=budget_seconds,
            )
        except Exception as exc:
            # the leases this sweep was to close stay open: an expiration failure, not only a check's
            reason = "database_error" if isinstance(exc, SQLAlchemyError) else "unexpected_error"
            emit("expiration", "failure", reason=reason)
            emit("manager_check", "failure", reason=reason, duration_ms=elapsed())
            raise
        if result.ran:
            for pool, count in result.expired_by_pool.items():
                emit("expiration", "success", reason="expired", pool=pool, count=count)
            emit("manager_check", "success", count=result.expired, duration_ms=elapsed())
        return result


def run_hand_over(app, *, budget_seconds: float | None = None) -> float | None:
    """One run of the queue's scheduler inside `app`; returns the seconds until the next
    one is due (None: no ticket waits). Raises what the database raises."""
    with app.app_context():
        _grants, expired, wait = run_transaction(  # the grants report themselves at the commit
            queue.run_due, now=token_time(app), budget_seconds=budget_seconds
        )
        for pool, count in expired.items():
            emit("ticket", "success", reason="expired", pool=pool, count=count)
        return wait


class Sweeper(BackgroundThread):
    """The token manager of one process; `wake` runs the queue's scheduler now (a ticket was
    queued in this process)."""

    thread_name = "token-sweeper"

    def __init__(self, app) -> None:
        super().__init__(app)
        self.interval = app.config["CHECK_INTERVAL_SECONDS"]

    def _loop(self) -> None:
        # the first sweep at start: /health knows the token manager from the outset
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            # a stalled database ends the attempt by the next one (or the request deadline)
            budget = max(self.interval, self.app.config["DB_DEADLINE_SECONDS"])
            if time.monotonic() >= next_sweep:
                try:
                    swept = run_sweep(self.app, min_gap_seconds=self.interval * 0.5, budget_seconds=budget)
                except Exception:
                    log.exception("token sweep failed; retrying next interval")
                else:
                    if swept.ran:  # one runner per interval for the whole cluster
                        self._housekeeping(swept.at)
                # jitter spreads the workers' attempts over the interval
                next_sweep = time.monotonic() + self.interval * random.uniform(0.5, 1.0)
            delay = next_sweep - time.monotonic()
            try:  # a pool with many expired leases and tickets may take a while: the sweep's budget
                due = run_hand_over(self.app, budget_seconds=budget)
            except Exception:
                log.exception("queue hand-over failed; retrying within a second")
                due = None
            # a moment past the end, so the lease has ended when we look
            delay = min(delay, IDLE_SCHEDULER_SECONDS if due is None else due + HAND_OVER_MARGIN_SECONDS)
            self._wake.wait(max(0.0, delay))
            self._wake.clear()

    def _housekeeping(self, now) -> None:
        """After a sweep: number pending events, prune old usages and events (a bounded amount)."""
        try:
            with self.app.app_context():  # prune reads published events only; usually none pending
                outbox.publish_pending()
            run_prune(self.app, now=now, max_batches=PRUNE_BATCHES_PER_SWEEP)
        except Exception:
            log.exception("pruning old usages and events failed; retrying next interval")


def wake_scheduler(app) -> None:
    """Wake the app's scheduler, if it has one: a ticket was queued here."""
    sweeper = app_state(app).sweeper
    if sweeper is not None:
        sweeper.wake()


def init_sweeper(app) -> None:
    """Give the app a sweeper when `SWEEPER_ENABLED` (started by service/background.py)."""
    if not app.config["SWEEPER_ENABLED"]:
        return
    app_state(app).sweeper = Sweeper(app)
