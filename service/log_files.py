"""Log files that any number of worker processes write: rotation, retention, write failures.

Rotation is concurrent-log-handler's (a maintained library made for several
processes): each write takes an exclusive lock on a lock file beside the log
(`.__<name>.lock`) and checks whether the file it holds open is still the one
at the path, so a worker never renames a file another worker just renamed and
never writes into a file that was rotated away without noticing. The standard
library's RotatingFileHandler does neither (each process rotates by its own
idea of the size; two workers lost lines on `FileNotFoundError` at rename).

`LOG_ROTATE`:
- `size` (default): `app.log`, `app.log.1` ... `app.log.<LOG_FILE_BACKUPS>` at
  `LOG_FILE_MAX_BYTES`.
- `daily`: at midnight UTC, dated names (`app.log.2026-11-30`); a day that
  passes `LOG_FILE_MAX_BYTES` also rotates (`app.log.2026-11-30.1`).
- `external`: the service never rotates; logrotate (or similar) renames the
  file and each worker reopens the path at its next line (WatchedFileHandler):
  nothing is lost, because lines written before the reopen land in the renamed
  file (never use logrotate's `copytruncate` with it).

`LOG_RETENTION_DAYS` deletes rotated files older than that many days at each
rotation, besides the `LOG_FILE_BACKUPS` count.

A write that fails (full disk, folder removed) loses that line, is counted
per file, and is reported on stderr once a minute, not once per line; the
`log_files` health check reports the count.
"""

from __future__ import annotations

import glob
import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from concurrent_log_handler import ConcurrentRotatingFileHandler, ConcurrentTimedRotatingFileHandler

ROTATIONS = ("size", "daily", "external")
FILE_SETTINGS = ("LOG_FILE", "LOG_ERROR_FILE", "LOG_EXCEPTIONS_FILE")
REPORT_EVERY_SECONDS = 60.0

_failures: dict[str, dict] = {}  # path -> {"lost", "error", "last_at", "reported_at"}
_failures_lock = threading.Lock()


def write_failures(path: str) -> dict | None:
    """Lines this process could not write to `path`: {"lost", "error", "seconds_ago"}, or None."""
    entry = _failures.get(os.path.abspath(path))
    if entry is None:
        return None
    return {
        "lost": entry["lost"],
        "error": entry["error"],
        "seconds_ago": round(time.monotonic() - entry["last_at"], 1),
    }


if TYPE_CHECKING:  # the mixins below are only ever mixed into a file handler
    _FileHandler = logging.FileHandler
else:
    _FileHandler = object


class _Quiet(_FileHandler):
    """Instead of a traceback on stderr per failed line: a count, and one line a minute."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        exc = sys.exc_info()[1]
        now = time.monotonic()
        with _failures_lock:
            entry = _failures.setdefault(
                self.baseFilename, {"lost": 0, "error": None, "last_at": now, "reported_at": None}
            )
            entry["lost"] += 1
            entry["error"], entry["last_at"] = type(exc).__name__ if exc else "Error", now
            report = entry["reported_at"] is None or now - entry["reported_at"] >= REPORT_EVERY_SECONDS
            if report:
                entry["reported_at"] = now
        if report:
            try:
                sys.stderr.write(
                    f"tokenpool: cannot write log file {self.baseFilename}: {exc} "
                    f"({entry['lost']} lines lost so far; reported again in {REPORT_EVERY_SECONDS:g} s)\n"
                )
            except Exception:
                pass  # stderr gone too: nothing left to tell

    def close(self) -> None:
        # a full disk fails the final flush too; those lines are already counted as lost
        for owner in (self, getattr(self, "clh", None)):
            stream = getattr(owner, "stream", None)
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        super().close()


class _Retention(_FileHandler):
    """After each rotation, delete rotated files older than `retention_days` (0 keeps them)."""

    retention_days = 0

    def doRollover(self) -> None:  # noqa: N802
        super().doRollover()  # type: ignore[misc]  # mixed into rotating handlers only
        if self.retention_days:
            prune(self.baseFilename, self.retention_days)


def prune(path: str, days: float, now: float | None = None) -> list[str]:
    """Delete `path`'s rotated files (`path.*`) last written more than `days` ago; returns them."""
    limit = (now or time.time()) - days * 86400
    deleted = []
    for rotated in glob.glob(glob.escape(path) + ".*"):
        try:
            if os.path.getmtime(rotated) < limit:
                os.remove(rotated)
                deleted.append(rotated)
        except OSError:
            continue  # another worker deleted it first
    return deleted


class SizeRotatingFile(_Quiet, _Retention, ConcurrentRotatingFileHandler):
    """`LOG_ROTATE=size`."""


class DailyRotatingFile(_Quiet, _Retention, ConcurrentTimedRotatingFileHandler):
    """`LOG_ROTATE=daily`: midnight UTC, dated names."""


class WatchedFile(_Quiet, logging.handlers.WatchedFileHandler):
    """`LOG_ROTATE=external`: reopens the path when logrotate has renamed the file."""


def file_handler(path: str, config) -> logging.Handler:
    """The handler for one log file under the configured rotation."""
    rotation = config.get("LOG_ROTATE", "size")
    if rotation == "external":
        return WatchedFile(path, encoding="utf-8")
    backups, max_bytes = config["LOG_FILE_BACKUPS"], config["LOG_FILE_MAX_BYTES"]
    handler: DailyRotatingFile | SizeRotatingFile
    if rotation == "daily":
        handler = DailyRotatingFile(
            path, when="midnight", utc=True, backupCount=backups, maxBytes=max_bytes, encoding="utf-8"
        )
    else:
        handler = SizeRotatingFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.retention_days = config.get("LOG_RETENTION_DAYS", 0)
    return handler


def configured_files(config) -> dict[str, str]:
    """{setting name: path} of the log files this configuration writes."""
    return {name: config[name] for name in FILE_SETTINGS if config.get(name)}


def check_folders(config) -> str | None:
    """The first log file setting whose folder is missing or not writable, as a one-line message."""
    for name, path in configured_files(config).items():
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"{name} is in a folder that does not exist: {folder}"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{name} is in a folder this process cannot write: {folder}"
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"{name} is a file this process cannot write: {path}"
    return None
