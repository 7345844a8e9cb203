"""Prometheus multiprocess files that a full folder cannot turn into a crash.

prometheus_client keeps each process's samples in memory-mapped files under
`PROMETHEUS_MULTIPROC_DIR` and grows them as sparse files: the disk blocks are
only taken when a page is first written through the mapping, and on a full
file system that write kills the process with SIGBUS. A new worker writes at
once, so it dies at boot, and gunicorn starts the next one forever.

Here every byte of a file is reserved (`posix_fallocate`) before it is mapped,
when the file is created and each time it grows, so a full folder becomes an
OSError at that moment. A series whose file cannot take it keeps counting in
this process's memory (it is missing from the scrape, the process lives on),
one WARNING line says so, and `storage_error()` reports it to `/health`.

Sizes (measured with this service's metrics): a process writes 4 files
(counter, histogram, gauge_livesum, gauge_max) of at least 64 KiB each; every
route called with 8 methods, good and bad bodies, grew them to 448 KiB (the
histogram to 256 KiB), because label values are bounded (route templates, not
paths). `PROCESS_RESERVE_BYTES` allows one more doubling of the histogram;
`folder_bytes(workers)` is what the folder needs (docs/DEPLOYMENT.md). A
dead worker's files are folded into per-type archive files by gunicorn's
master (`fold_dead_process`), so restarts do not grow the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from .config import ConfigError

log = logging.getLogger("tokenpool.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
FILE_BYTES = 1 << 16  # prometheus_client's first size of a file (_INITIAL_MMAP_SIZE)
PROCESS_RESERVE_BYTES = 2 << 20  # measured 448 KiB per process with every route, method and status
MIN_FREE_BYTES = 2 * PROCESS_RESERVE_BYTES  # below this at start: refuse; in /health: degraded

_failure: dict = {"error": None, "count": 0}
_failure_lock = threading.Lock()
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def current_pid() -> int:
    """This process's id without a system call (os.getpid costs ~0.5 us here, and prometheus_client
    asks on every sample: 7 to 20 times a request); kept right across os.fork, as gunicorn forks."""
    return _pid[0]


def folder_bytes(workers: int) -> int:
    """Room the metrics folder needs: the live workers, the archive of dead ones, the start check, a spare.

    A dead worker's samples are folded into the archive files (`fold_dead_process`),
    so restarts do not add files.
    """
    return (workers + 3) * PROCESS_RESERVE_BYTES


def storage_error() -> str | None:
    """The last reason a sample could not go to its file in this process, or None."""
    return _failure["error"]


def _failed(exc: OSError, filename: str) -> None:
    with _failure_lock:
        first = _failure["error"] is None
        _failure["error"] = f"{os.strerror(exc.errno) if exc.errno else exc} ({os.path.basename(filename)})"
        _failure["count"] += 1
    if first:
        log.warning(
            "metrics folder %s cannot take more samples (%s): new series of this process stay in memory"
            " and are missing from /metrics until it restarts",
            os.path.dirname(filename),
            _failure["error"],
        )


def _reserve(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here: as sparse as before
            os.ftruncate(fd, max(size, os.fstat(fd).st_size))
            return
        raise


class ReservedMmapedDict(MmapedDict):
    """prometheus_client's MmapedDict with every page reserved on disk before it is mapped.

    Raises OSError (ENOSPC) when the file cannot be created or grown, never SIGBUS later.
    """

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            created = not os.path.exists(filename)
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _reserve(fd, max(os.fstat(fd).st_size, FILE_BYTES))
            except OSError:
                if created:
                    os.unlink(filename)  # an empty file would be mapped sparse next time
                raise
            finally:
                os.close(fd)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        encoded = len(key.encode("utf-8"))
        needed = self._used + 4 + encoded + (8 - (encoded + 4) % 8) + 16  # MmapedDict's entry layout
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity != self._capacity:
            _reserve(self._f.fileno(), capacity)  # the parent then maps the grown file
        super()._init_value(key)


def ReservedMultiProcessValue(process_identifier=current_pid):  # noqa: N802 (prometheus_client's shape)
    """prometheus_client's MultiProcessValue on `ReservedMmapedDict`, falling back to memory on OSError."""
    files: dict[str, ReservedMmapedDict] = {}
    instances: list = []
    pid = {"value": process_identifier()}
    lock = threading.Lock()

    class ReservedValue:
        _multiprocess = True

        def __init__(
            self, typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode="", **_
        ):  # noqa: E501
            self._params = (typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode)
            with lock:
                self._check_for_pid_change()
                self._reset()
                instances.append(self)

        def _reset(self) -> None:
            typ, metric_name, name, labelnames, labelvalues, help_text, mode = self._params
            prefix = f"{typ}_{mode}" if typ == "gauge" else typ
            self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            self._value, self._timestamp, self._file = 0.0, 0.0, None
            directory = os.environ.get(ENV)
            if not directory:
                return  # the variable was unset since: this series stays in memory
            filename = os.path.join(directory, f"{prefix}_{pid['value']}.db")
            try:
                if prefix not in files:
                    files[prefix] = ReservedMmapedDict(filename)
                self._value, self._timestamp = files[prefix].read_value(self._key)
                self._file = files[prefix]
            except OSError as exc:
                _failed(exc, filename)

        def _check_for_pid_change(self) -> None:
            actual = process_identifier()
            if pid["value"] != actual:  # forked: this process writes files of its own
                pid["value"] = actual
                for f in files.values():
                    f.close()
                files.clear()
                for value in instances:
                    value._reset()

        def _write(self) -> None:
            if self._file is None:
                return
            try:
                self._file.write_value(self._key, self._value, self._timestamp)
            except OSError as exc:
                _failed(exc, self._file._fname)
                self._file = None

        def inc(self, amount) -> None:
            with lock:
                self._check_for_pid_change()
                self._value += amount
                self._timestamp = 0.0
                self._write()

        def set(self, value, timestamp=None) -> None:
            with lock:
                self._check_for_pid_change()
                self._value = value
                self._timestamp = timestamp or 0.0
                self._write()

        def set_exemplar(self, exemplar) -> None:
            return  # not in multiprocess mode (as prometheus_client)

        def get(self):
            with lock:
                self._check_for_pid_change()
                return self._value

        def get_exemplar(self):
            return None

    return ReservedValue


def use_reserved_files() -> None:
    """Make metrics created from now on write reserved files, in a multiprocess-mode process.

    prometheus_client reads `values.ValueClass` each time a metric's child is created.
    """
    current = values.ValueClass
    # only where prometheus_client itself chose multiprocess values (the variable was set when it
    # was imported): a process that sets the variable later keeps its in-memory values
    multiprocess = getattr(current, "_multiprocess", False)
    if os.environ.get(ENV) and multiprocess and not getattr(current, "_reserved", False):
        values.ValueClass = ReservedMultiProcessValue()
        values.ValueClass._reserved = True


def check_folder(directory: str, min_free_bytes: int = 0) -> None:
    """Create `directory` if missing; raise ConfigError (naming the variable) if it cannot hold files.

    Checks that it is a folder this process can write, and that its file system
    has at least `min_free_bytes` free.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{ENV} folder {directory!r} cannot be created: {exc.strerror}") from None
    if not os.path.isdir(directory):
        raise ConfigError(f"{ENV} must name a folder, {directory!r} is not one")
    probe = os.path.join(directory, f".write-check-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{ENV} folder {directory!r} is not writable: {exc.strerror}") from None
    free = os.statvfs(directory)
    free_bytes = free.f_bavail * free.f_frsize
    if free_bytes < min_free_bytes:
        raise ConfigError(
            f"{ENV} folder {directory!r} has {free_bytes // 2**10} KiB free, needs at least"
            f" {min_free_bytes // 2**10} KiB (see docs/DEPLOYMENT.md for its size)"
        )


def check_at_start() -> None:
    """At gunicorn's start: the metrics folder (if any) is usable and has `MIN_FREE_BYTES` free.

    Raises ConfigError naming `PROMETHEUS_MULTIPROC_DIR`.
    """
    directory = os.environ.get(ENV)
    if directory:
        check_folder(directory, MIN_FREE_BYTES)


# How the samples of a dead process join the archive, per file prefix (prometheus_client's
# aggregation of that type or gauge mode). Other gauge modes keep one series per pid.
FOLDS = {
    "counter": "sum",
    "histogram": "sum",
    "summary": "sum",
    "gauge_sum": "sum",
    "gauge_max": "max",
    "gauge_min": "min",
    "gauge_mostrecent": "mostrecent",
}
ARCHIVE = "archive"  # `<prefix>_archive.db`: read by MultiProcessCollector like any process's file
LOCK_FILE = "fold.lock"  # not *.db: the collector ignores it
_folding: dict = {"busy": False, "pending": []}


@contextlib.contextmanager
def folder_lock(directory: str, *, exclusive: bool):
    """Shared for a scrape, exclusive for a fold: a scrape never sees a process half folded."""
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _folded(how: str, old: tuple | None, new: tuple) -> tuple:
    if old is None:
        return new
    if how == "sum":
        return old[0] + new[0], 0.0
    if how == "max":
        return max(old[0], new[0]), 0.0
    if how == "min":
        return min(old[0], new[0]), 0.0
    return new if new[1] >= old[1] else old  # mostrecent: the later timestamp wins


def fold_dead_process(pid: int, directory: str | None = None) -> None:
    """Add the samples of dead process `pid` into the folder's archive files, then delete its files.

    Called by gunicorn's master for each worker that exited (from its SIGCHLD
    handler: a call that arrives while another runs is queued, never nested).
    Bounds the folder to the live processes plus one archive per file type,
    however often workers restart, while counters never go back. A file that
    cannot be folded (the folder is full) stays as it is: nothing is lost.
    """
    directory = directory or os.environ.get(ENV)
    if not directory:
        return
    _folding["pending"].append((pid, directory))
    if _folding["busy"]:
        return
    _folding["busy"] = True
    try:
        while _folding["pending"]:
            try:
                _fold_one(*_folding["pending"].pop(0))
            except Exception:  # the master must live on: at worst a file stays
                log.exception("metrics of a dead process not folded")
    finally:
        _folding["busy"] = False


def _fold_one(pid: int, directory: str) -> None:
    with folder_lock(directory, exclusive=True):
        for prefix, how in FOLDS.items():
            dead = os.path.join(directory, f"{prefix}_{pid}.db")
            if not os.path.exists(dead):
                continue
            try:
                samples = [sample[:3] for sample in MmapedDict.read_all_values_from_file(dead)]
                archive = ReservedMmapedDict(os.path.join(directory, f"{prefix}_{ARCHIVE}.db"))
            except (OSError, RuntimeError) as exc:
                log.warning("metrics of process %s not folded (%s): its file stays", pid, exc)
                continue
            try:
                current = {key: (value, ts) for key, value, ts in archive.read_all_values()}
                for key, _, _ in samples:  # room for every new series first: all or nothing
                    if key not in current:
                        archive.read_value(key)
                for key, value, ts in samples:
                    archive.write_value(key, *_folded(how, current.get(key), (value, ts)))
            except OSError as exc:
                _failed(exc, dead)
                continue
            finally:
                archive.close()
            os.unlink(dead)
