"""A serving process's background threads: the token manager and the event publisher.

The token manager (service/tokens/sweeper.py, with SWEEPER_ENABLED) and the
event publisher (service/events/publisher.py) start when a gunicorn worker
has loaded the app (`post_worker_init`) or, elsewhere (`flask run`, tests),
with the first request; never in CLI commands or in gunicorn's master. They
stop when the worker exits (gunicorn's `worker_exit`).
"""

from __future__ import annotations

import threading

from .state import app_state


class BackgroundThread:
    """One daemon thread of a serving process: `start` once, `wake` it, `stop` it.

    A subclass names the thread (`thread_name`) and writes `_loop`, which waits
    on `_wake` and returns once `_stop` is set (`stop` sets both).
    """

    thread_name = "background"

    def __init__(self, app) -> None:
        self.app = app
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        """Whether `start` was called (the thread may have ended since)."""
        return self._thread is not None

    @property
    def running(self) -> bool:
        """Whether the thread is alive now."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Have the thread look now (before `start`: when it starts)."""
        if not self._wake.is_set():  # a flag read while it is set: the hot path takes no lock
            self._wake.set()

    def stop(self, timeout: float = 5) -> None:
        """Ask the thread to end and wait for it at most `timeout` seconds."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        raise NotImplementedError


def start_background(app) -> None:
    """Start the app's background threads (`app` None: a worker that loaded no app; nothing)."""
    if app is None:
        return
    state = app_state(app)
    state.publisher.start()
    if state.sweeper is not None:
        state.sweeper.start()


def stop_background(app, timeout: float = 5) -> None:
    """Stop them and the event feed's thread (service/events/stream.py), waiting at most
    `timeout` seconds for each."""
    state = app_state(app)
    if state.sweeper is not None:
        state.sweeper.stop(timeout)
    state.publisher.stop(timeout)
    state.event_feed.stop(timeout)


def init_background(app) -> None:
    """The first request starts the background threads where no gunicorn hook did."""
    publisher = app_state(app).publisher

    @app.before_request
    def _start_background():
        if not publisher.started:  # one attribute read per request once they run
            start_background(app)
