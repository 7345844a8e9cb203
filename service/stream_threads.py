"""Which thread may hold an event stream open: what the default gunicorn worker tells the app.

`service/gunicorn_worker.py` marks its process (`mark_worker`) and each thread
it hands a stream request to (`mark_stream_thread`); the events blueprint asks
`in_stream_thread` before holding a response open. Apart from gunicorn, so
that the app runs without it (`flask run`, the tests).

Stream work yields the processor to the API: `lower_priority` gives the
threads that serve held streams and read the event feed a lower CPU priority
than the worker's own loop (docs/PERFORMANCE.md, "Fourteenth run").
"""

from __future__ import annotations

import os
import sys
import threading

# nice(1) increment of stream work's threads: under full load the API's threads (weight 1024 at
# nice 0) get about nine times their share of a contended core (weight 110 at nice 10), as in
# the kernel's sched_prio_to_weight table; alone on an idle core they run as fast as any.
STREAM_NICENESS = 10

_worker = False  # this process is a StreamingSyncWorker, once it has started
_thread = threading.local()  # .holds: this thread serves a stream the worker handed over


def mark_worker() -> None:
    """This process is a StreamingSyncWorker (called in the worker, after the fork)."""
    global _worker
    _worker = True


def mark_stream_thread() -> None:
    """The calling thread serves one stream request handed over by the worker (at
    `lower_priority`)."""
    _thread.holds = True
    lower_priority()


def lower_priority() -> None:
    """Set the calling thread's nice value to the process's (its main thread's) plus
    `STREAM_NICENESS`, for stream work that must not slow the API down. Linux only: there
    `setpriority(PRIO_PROCESS, tid)` sets one thread's value (setpriority(2), "BUGS": threads
    do not share it); elsewhere it would set the whole process's, so nothing is done. A
    refusal (a sandbox without the call) leaves the priority as it was.

    A thread inherits the value of the thread that starts it: a long-lived thread that a
    request may start lazily (the monitoring store's flusher) calls `normal_priority` first.
    """
    _set_niceness(STREAM_NICENESS)


def normal_priority() -> None:
    """Set the calling thread's nice value to the process's (undo an inherited `lower_priority`)."""
    _set_niceness(0)


def _set_niceness(increment: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's on Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, base + increment))
    except OSError:
        pass


def in_stream_thread() -> bool | None:
    """None when this process is not a StreamingSyncWorker; else whether the calling thread
    is one of its stream threads (True: the response may stay open; False: the worker's own
    loop, which a response held open would block)."""
    if not _worker:
        return None
    return getattr(_thread, "holds", False)
