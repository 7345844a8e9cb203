"""Which thread may hold an event stream open: what the default gunicorn worker tells the app.

`service/gunicorn_worker.py` marks its process (`mark_worker`) and each thread
it hands a stream request to (`mark_stream_thread`); the events blueprint asks
`in_stream_thread` before holding a response open. Apart from gunicorn, so
that the app runs without it (`flask run`, the tests).
"""

from __future__ import annotations

import threading

_worker = False  # this process is a StreamingSyncWorker, once it has started
_thread = threading.local()  # .holds: this thread serves a stream the worker handed over


def mark_worker() -> None:
    """This process is a StreamingSyncWorker (called in the worker, after the fork)."""
    global _worker
    _worker = True


def mark_stream_thread() -> None:
    """The calling thread serves one stream request handed over by the worker."""
    _thread.holds = True


def in_stream_thread() -> bool | None:
    """None when this process is not a StreamingSyncWorker; else whether the calling thread
    is one of its stream threads (True: the response may stay open; False: the worker's own
    loop, which a response held open would block)."""
    if not _worker:
        return None
    return getattr(_thread, "holds", False)
