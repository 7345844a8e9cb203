"""gunicorn's sync worker, with event streams held open by threads of their own (the default).

A sync worker serves one connection at a time: the model the API is fastest
on (docs/PERFORMANCE.md), and one that a held Server-Sent Events stream would
block for its whole life. `StreamingSyncWorker` keeps that loop for every
request but one kind: a `GET /api/events/stream`, once gunicorn has parsed
it, goes to a thread that runs gunicorn's own `handle_request` for it (the
whole Flask stack: authentication, limits, logs, metrics) and writes the
stream until it ends, while the worker goes back to accepting. A held stream
waits on the process's event feed (service/events/stream.py) and costs a
write per batch of new events and a heartbeat now and then.

The thread gets its own descriptor of the connection (`socket.dup`): gunicorn
closes the worker's one when `handle` returns, and the connection lives on
until both are closed. Its writes time out after gunicorn's `timeout`, so a
client that stops reading frees its thread. Requests that carry a body and
connections whose TLS gunicorn terminates itself (an `SSLSocket` cannot be
duplicated) stay in the worker's loop, where `service.stream_threads` tells
the app not to hold them. When the worker ends (`end_streams`, from
gunicorn.conf.py's `worker_exit`), its streams end as a drain ends them.

Relies on `SyncWorker.handle(listener, client, addr)` parsing the request and
calling `self.handle_request(listener, req, client, addr)`, gunicorn's worker
class being the documented extension point (the `worker_class` setting takes
a class path); tests/protection/test_library_tripwires.py fails if that changes.
"""

from __future__ import annotations

import errno
import threading
import time

from gunicorn import util  # type: ignore[import-untyped]
from gunicorn.workers.sync import SyncWorker  # type: ignore[import-untyped]

from .stream_threads import mark_stream_thread, mark_worker

STREAM_PATH = "/api/events/stream"  # service/events/routes.py, `live`
STREAM_THREAD = "event-stream"  # the name of each stream's thread (`end_streams` finds them by it)
QUIET_ERRORS = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None)  # None: the write timed out


class StreamingSyncWorker(SyncWorker):
    """A sync worker whose event-stream requests run in threads of their own (module docstring)."""

    def init_process(self) -> None:
        """In the worker process, after the fork: mark the process, then gunicorn's start."""
        mark_worker()
        super().init_process()

    def handle_request(self, listener, req, client, addr) -> None:
        """An event stream goes to a thread; any other request is served here, as SyncWorker does."""
        if not _can_hold(req, self.cfg):
            super().handle_request(listener, req, client, addr)
            return
        conn = client.dup()  # the worker's `handle` closes `client` when this returns
        conn.settimeout(self.cfg.timeout)  # a client that stops reading frees the thread
        threading.Thread(
            target=self._stream, args=(listener, req, conn, addr), name=STREAM_THREAD, daemon=True
        ).start()

    def _stream(self, listener, req, conn, addr) -> None:
        """gunicorn's `handle_request` for one stream, with the error handling of its `handle`."""
        mark_stream_thread()
        try:
            super().handle_request(listener, req, conn, addr)
        except StopIteration:  # gunicorn closed a response that failed after its headers
            pass
        except OSError as exc:
            if exc.errno not in QUIET_ERRORS:
                self.log.exception("Socket error serving an event stream.")
        except BaseException as exc:
            self.handle_error(req, conn, addr, exc)
        finally:
            util.close(conn)

    def end_streams(self, timeout: float) -> int:
        """End the held streams and wait for their threads, `timeout` seconds at most in all;
        how many are still running. Sets the process's `draining` flag, on which a stream ends
        within about a second: a SIGTERM has set it already, a worker ending for another reason
        (`max_requests`, its master gone) has not."""
        from .health.checks import draining

        draining.set()
        deadline = time.monotonic() + timeout
        threads = [thread for thread in threading.enumerate() if thread.name == STREAM_THREAD]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in threads)


def _can_hold(req, cfg) -> bool:
    """Whether this parsed request is an event stream that a thread of its own can serve."""
    return (
        req.method == "GET"
        and req.path == STREAM_PATH
        and not cfg.is_ssl
        and not any(_body_header(name, value) for name, value in req.headers)
    )


def _body_header(name: str, value: str) -> bool:
    """Whether a header (as gunicorn's parser names it: upper case; a Content-Length it let
    through is digits) announces a request body: any length but zero ("0", "00")."""
    return name == "TRANSFER-ENCODING" or (name == "CONTENT-LENGTH" and value.strip().strip("0") != "")
