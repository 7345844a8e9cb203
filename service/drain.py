"""Stop a gunicorn worker without resetting a connection it had already let in.

When the last process holding a listening socket closes it, the kernel resets
every connection still waiting in the socket's accept queue: clients that had
connected (and sent their request) get "connection reset", and a proxy cannot
tell whether a POST was processed, so it does not retry it. gunicorn's own
shutdown closes the socket after the workers' current requests, whatever is
queued behind them.

`finish(worker)` ends the drain of one worker instead, in this order:

1. New connections are no longer let in: a socket filter on the listening
   socket drops the first packet of a new connection (a SYN without ACK), so
   nothing more enters the accept queue. The client's kernel sends the SYN
   again after about a second.
2. After `SETTLE_SECONDS` (handshakes already under way complete), every
   connection in the queue is accepted (sync workers keep them to serve;
   other worker types wait until their own loop has accepted them).
3. This worker's descriptor of the listening socket is swapped for a socket
   nobody connects to, so a worker still busy with a long request does not
   keep the port open. When every worker has done so the port is closed and
   the repeated SYN is refused: nginx retries it on another instance, even a
   POST, because nothing was sent.
4. The worker serves what it accepted, then exits; gunicorn's master kills
   what is left at `graceful_timeout`.

Only when the whole instance stops (`watch_master` marks a SIGTERM to
gunicorn's master, which then closes its own copy of the port): a worker
retired alone (a HUP reload, fewer workers) just ends its loop, because the
master and the other workers keep serving the port and its queue. Never with
systemd socket activation or during a USR2 upgrade, where the port outlives
this master.

Linux only for step 1 (other systems skip it: a connection arriving in the
microseconds between the last accept and the close can then still be reset).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import select
import signal
import socket
import struct
import threading
import time

log = logging.getLogger("tokenpool.drain")

_lock = threading.Lock()
_accepted: list = []  # (listener, client, address) taken by `finish`, for `serve_accepted`

SETTLE_SECONDS = 0.2  # round trips of handshakes already under way; a LAN needs a millisecond
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux, <asm-generic/socket.h>
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
_stopping: mmap.mmap | None = None  # one byte shared by the master and its workers: 1 = instance stops

# Classic BPF, run by the kernel on each packet for the listening socket with
# the TCP header at offset 0: drop SYN-without-ACK (a new connection), keep the
# rest (the final ACK of a handshake under way, data of queued connections).
_SYN_DROP = (
    (0x30, 0, 0, 13),  # ldb [13]          TCP flags
    (0x54, 0, 0, 0x12),  # and #0x12         SYN | ACK
    (0x15, 0, 1, 0x02),  # jeq #0x02         only SYN: a new connection
    (0x06, 0, 0, 0),  # ret #0            drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1           keep the whole packet
)


def refuse_new_connections(sock: socket.socket) -> bool:
    """Let no new TCP connection into `sock`'s accept queue (step 1); False where not possible."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False  # a Unix socket's path is unlinked by gunicorn's master at SIGTERM
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in _SYN_DROP))
    program = struct.pack("HP", len(_SYN_DROP), ctypes.addressof(code))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
    except OSError as exc:
        log.warning("cannot hold new connections back during the drain: %s", exc)
        return False
    return True


def let_new_connections_in(sock: socket.socket) -> None:
    """Remove a filter left on an inherited listening socket (systemd, a USR2 upgrade)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass  # none attached (ENOENT), or not Linux


def watch_master(server) -> None:
    """In gunicorn's master before the first worker (`when_ready`): mark a SIGTERM as the instance stopping.

    Wraps gunicorn's own SIGTERM handler. Not marked while a USR2 upgrade runs
    (`reexec_pid`) or with systemd's sockets: the port outlives this master then.
    """
    global _stopping
    for listener in server.LISTENERS:
        let_new_connections_in(getattr(listener, "sock", listener))
    if _stopping is None:
        _stopping = mmap.mmap(-1, 1)  # anonymous and shared: workers forked later see its byte
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(sig, frame):
        if not getattr(server, "systemd", False) and not getattr(server, "reexec_pid", 0):
            _stopping[0] = 1
        if callable(previous):
            previous(sig, frame)

    signal.signal(signal.SIGTERM, on_term)


def instance_stopping() -> bool:
    """True in a worker once its master got SIGTERM (the whole instance stops, the port closes)."""
    return _stopping is not None and _stopping[0] == 1


def retire(worker) -> None:
    """End a worker's loop after its current request (alone: its master keeps the port).

    Wakes the worker's select() through its pipe, so the loop ends now. A
    gthread worker first lets what it took in finish (`_finish_connections`):
    its loop drops every connection it holds when it ends.
    """
    from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

    if isinstance(worker, ThreadWorker):
        _finish_connections(worker, time.monotonic() + worker.cfg.graceful_timeout / 2)
    worker.alive = False
    os.write(worker.PIPE[1], b"1")


def _finish_connections(worker, deadline: float) -> None:
    """gthread: accept nothing more, answer every connection already accepted (each answer
    closes its connection), let kept-alive ones go, until none is left or `deadline`."""
    worker.cfg.set("keepalive", 0)  # read per response: from now on each one closes its connection
    with worker._lock:
        for listener in worker.sockets:
            try:
                worker.poller.unregister(listener)
            except (KeyError, ValueError, OSError):
                pass  # not registered (closed, or the loop has not started)
    while worker.nr_conns > 0 and time.monotonic() < deadline:
        time.sleep(0.01)


def queue_is_empty(sock: socket.socket) -> bool:
    """No connection is waiting in `sock`'s accept queue (a listening socket is readable then)."""
    try:
        return not select.select([sock], [], [], 0)[0]
    except (OSError, ValueError):  # closed
        return True


def accept_waiting(sock: socket.socket) -> list[tuple[socket.socket, object]]:
    """Every connection waiting in `sock`'s accept queue now, as (client, address)."""
    accepted: list[tuple[socket.socket, object]] = []
    while True:
        try:
            client, address = sock.accept()
        except BlockingIOError:
            return accepted
        except OSError as exc:
            if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                continue
            return accepted  # closed or shut down: nothing more to take
        client.setblocking(True)
        accepted.append((client, address))


def release(sock: socket.socket) -> None:
    """Drop this process's hold on the listening socket without touching its descriptor number.

    `dup2` puts a socket nobody connects to (listening on an ephemeral loopback
    port, non-blocking) in its place, so a thread of this process that reaches
    `accept()` or `select()` on the old number finds an empty queue, never a
    closed or reused descriptor.
    """
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        placeholder.bind(("127.0.0.1", 0))
        placeholder.listen(1)
        placeholder.setblocking(False)
        os.dup2(placeholder.fileno(), sock.fileno())
    finally:
        placeholder.close()


class _Listener:
    """What a sync worker's `handle()` asks of a listener: its address, kept from before `release`."""

    def __init__(self, name) -> None:
        self._name = name

    def getsockname(self):
        return self._name


def finish(worker, deadline: float) -> None:
    """Steps 1-3 for one gunicorn worker (called from a thread); step 4 is `serve_accepted`.

    `deadline` (time.monotonic()) bounds the wait of non-sync workers for their
    queue to empty. Ends with `retire(worker)`: its loop ends now.
    """
    from gunicorn.workers.sync import SyncWorker  # type: ignore[import-untyped]

    try:
        sockets = [getattr(listener, "sock", listener) for listener in worker.sockets]
        for sock in sockets:
            refuse_new_connections(sock)
        time.sleep(SETTLE_SECONDS)
        for sock in sockets:
            name = sock.getsockname()
            if isinstance(worker, SyncWorker):
                taken = [(_Listener(name), client, address) for client, address in accept_waiting(sock)]
                with _lock:
                    _accepted.extend(taken)
            else:  # their loop accepts into their own pool of connections
                while not queue_is_empty(sock) and time.monotonic() < deadline:
                    time.sleep(0.01)
            release(sock)
    except Exception:
        log.exception("drain: could not stop accepting cleanly")
    finally:
        retire(worker)


def serve_accepted(worker) -> int:
    """Step 4, in the worker's main thread after its loop ended: serve what `finish` accepted."""
    with _lock:
        accepted = _accepted[:]
        del _accepted[:]
    for listener, client, address in accepted:
        worker.notify()
        worker.handle(listener, client, address)
    return len(accepted)
