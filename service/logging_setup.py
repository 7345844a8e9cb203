"""Logging: JSON lines (python-json-logger) or a coloured console, request ids on every line."""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
import threading
import time

from flask import g, has_request_context, request
from pythonjsonlogger.orjson import OrjsonFormatter

from .log_files import file_handler
from .log_shipping import TcpJsonLines, count_drop
from .tracing import current_trace_ids

COLOURS = {"DEBUG": "36", "INFO": "32", "WARNING": "33", "ERROR": "31", "CRITICAL": "35"}
OUR_HANDLER = "_tokenpool"


class RequestContextFilter(logging.Filter):
    """Put the current request's ids, method and path on every record written while serving it.

    A `method` or `path` the record already carries is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields to `record`; always True (no record is dropped)."""
        if has_request_context():
            ctx, fields = g._get_current_object(), record.__dict__
            fields["request_id"] = ctx.get("request_id", "-")
            fields["correlation_id"] = ctx.get("correlation_id", "-")
            if "path" not in fields:
                req = request._get_current_object()  # type: ignore[attr-defined]  # the request, not its proxy
                fields["method"], fields["path"] = req.method, req.path
        else:
            record.request_id = getattr(record, "request_id", "-")
            record.correlation_id = getattr(record, "correlation_id", "-")
        ids = current_trace_ids()
        if ids:
            record.trace_id, record.span_id = ids
        return True


class RepeatFilter(logging.Filter):
    """One line per kind of failure per window, then one summary line with the count of repeats.

    A kind is a WARNING-or-worse record's logger, level, message template and
    arguments, exception class, `error_code`, `reason`, `statement` and `route`. The first record of
    a kind in a window passes whole (its traceback included); the rest of the
    window is counted, not written, and a summary line (`event=log_repeats`,
    `repeats`, `window_seconds`) follows when the window closes. Lines below
    WARNING (the access line, token events) always pass. One filter per
    handler: each handler writes its own summaries.
    """

    MAX_KINDS = 1000

    def __init__(self, handler: logging.Handler, window: float, clock=time.monotonic) -> None:
        super().__init__()
        self.handler, self.window, self.clock = handler, window, clock
        self._kinds: dict[tuple, list] = {}  # kind -> [window start, repeats, first record]
        self._due = None  # when the oldest window with repeats closes
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` is written: False for a repeat of its kind inside the window (counted)."""
        if record.levelno < logging.WARNING:
            if self._due is not None and self.clock() >= self._due:
                self._summarise(self.clock())
            return True
        now = self.clock()
        kind = _kind(record)
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                if self._due is None:
                    self._due = entry[0] + self.window
                return False
        if self._due is not None and now >= self._due or entry is not None:
            self._summarise(now)
        with self._lock:
            if len(self._kinds) >= self.MAX_KINDS:
                self._kinds.clear()
            self._kinds[kind] = [now, 0, record]
        return True

    def _summarise(self, now: float) -> None:
        """Write a summary for each window that has closed with repeats in it."""
        with self._lock:
            closed = [(k, e) for k, e in self._kinds.items() if now - e[0] >= self.window]
            for kind, _ in closed:
                del self._kinds[kind]
            due = [e[0] + self.window for e in self._kinds.values() if e[1]]
            self._due = min(due) if due else None
        for _, (_start, repeats, first) in closed:
            if repeats:  # written past the filters: the summary belongs to no request
                summary = _summary(first, repeats, self.window)
                self.handler.acquire()
                try:
                    self.handler.emit(summary)
                finally:
                    self.handler.release()

    def flush(self) -> None:
        """Write the summaries of every open window now (at exit)."""
        self._summarise(float("inf"))


def _kind(record: logging.LogRecord) -> tuple:
    exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
    kind: tuple = (
        record.name,
        record.levelno,
        record.msg,
        record.args,
        exc,
        getattr(record, "error_code", None),
        getattr(record, "reason", None),
        getattr(record, "statement", None),  # slow queries: one kind per statement
        getattr(record, "route", None),  # slow requests: one kind per route
    )
    try:
        hash(kind)
    except TypeError:  # unhashable arguments: compare them by their text
        kind = (*kind[:3], repr(record.args), *kind[4:])
    return kind


def _summary(first: logging.LogRecord, repeats: int, window: float) -> logging.LogRecord:
    fields = {
        "event": "log_repeats",
        "repeats": repeats,
        "window_seconds": window,
        "repeated_message": first.getMessage(),
        "request_id": "-",
        "correlation_id": "-",
    }
    for name in ("error_code", "reason"):
        if getattr(first, name, None) is not None:
            fields[name] = getattr(first, name)
    record = logging.LogRecord(
        first.name,
        first.levelno,
        "",
        0,
        "%d more like this in the last %g s: %s",
        (repeats, window, fields["repeated_message"]),
        None,
    )
    record.__dict__.update(fields)
    return record


class ConsoleFormatter(logging.Formatter):
    """Readable development output: time, level, request id, logger, message, extras."""

    STANDARD = set(logging.makeLogRecord({}).__dict__) | {
        "message",
        "asctime",
        "request_id",
        "correlation_id",
    }

    def __init__(self, colour: bool) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s")
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        """The record as one console line: the standard fields, then its extra fields as key=value."""
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in self.STANDARD)
        if extras:
            line = f"{line} {extras}"
        if self.colour:
            line = f"\033[{COLOURS.get(record.levelname, '0')}m{line}\033[0m"
        return line


def json_formatter(config=None) -> logging.Formatter:
    """python-json-logger's formatter on orjson: the same fields, written compactly, at half the CPU.

    With a config, every line also carries `service`, `version` and `environment`.
    """
    static = {}
    if config is not None:
        static = {
            "service": config.get("OTEL_SERVICE_NAME") or "tokenpool",
            "version": config["APP_VERSION"],
            "environment": config["APP_ENV"],
        }
    return OrjsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields=static,
        timestamp=True,
    )


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


class UnhandledOnly(logging.Filter):
    """The exceptions log: records with a traceback, except the answers to a database outage.

    That is every 500 (an exception no handler expected) and every
    `log.exception` of a background job, without the repeated 503s of an outage.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """True for a record with a traceback that is not a 503 of a database outage."""
        has_traceback = record.exc_info is not None or bool(record.exc_text)
        return has_traceback and getattr(record, "error_code", None) != "SERVICE_UNAVAILABLE"


def _handler(handler: logging.Handler, formatter: logging.Formatter, level=logging.NOTSET):
    handler.setFormatter(formatter)
    handler.setLevel(level)
    return handler


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread with the request's ids and the traceback as text."""

    queue: queue.Queue  # always a queue.Queue here: flush_logs joins it
    listener: logging.handlers.QueueListener  # the writer thread, set right after construction

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class _DroppingEnqueue(_Enqueue):
    """The shipping queue: a full queue drops the record (counted) instead of waiting."""

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            count_drop("queue_full")


def _ship(config) -> logging.Handler:
    """LOGSTASH_HOST: a queue in front of a TCP sender thread (service/log_shipping.py)."""
    sender = TcpJsonLines(config["LOGSTASH_HOST"], config["LOGSTASH_PORT"])
    sender.setFormatter(json_formatter(config))
    shipping = _DroppingEnqueue(queue.Queue(config["LOGSTASH_QUEUE_SIZE"]))
    shipping.listener = logging.handlers.QueueListener(shipping.queue, sender)
    shipping.listener.start()
    atexit.register(_close_queue, shipping)
    return shipping


def _stop(listener) -> None:
    """Write what is queued, end the writer thread and close what it wrote to (once)."""
    if listener is not None and listener._thread is not None:
        listener.stop()
        for handler in listener.handlers:
            handler.close()


def _close_queue(handler: _Enqueue) -> None:
    """At exit: the repeat counts into the queue, then the queue to the files."""
    _flush_repeats(handler)
    _stop(handler.listener)


def _flush_repeats(handler: logging.Handler) -> None:
    if getattr(getattr(handler, "stream", None), "closed", False):
        return  # its stream was closed under it (a test's captured stdout): nowhere to write
    for f in handler.filters:
        if isinstance(f, RepeatFilter):
            f.flush()


@atexit.register
def _flush_all_repeats() -> None:
    """At exit, before logging closes the handlers: the counts of windows still open."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, OUR_HANDLER, False):
            _flush_repeats(handler)


def flush_logs() -> None:
    """Wait until the writer thread (LOG_ASYNC) has written every queued record."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Enqueue):
            handler.queue.join()


def configure_logging(config) -> None:
    """Install our handlers on the root logger (replacing ours from an earlier app).

    With `LOG_ASYNC` a request only queues its records; a thread formats and
    writes them, so a slow stdout or disk never blocks a request.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, OUR_HANDLER, False)]:
        _flush_repeats(handler)
        root.removeHandler(handler)
        _stop(getattr(handler, "listener", None))
        handler.close()
    stream = sys.stdout
    if config["LOG_FORMAT"] == "json":
        console = json_formatter(config)
    else:  # colour only on a terminal: the stream written to decides, not another one
        console = ConsoleFormatter(colour=_isatty(stream))
    handlers = [_handler(logging.StreamHandler(stream), console)]
    if config.get("LOG_FILE"):
        handlers.append(_handler(file_handler(config["LOG_FILE"], config), json_formatter(config)))
    if config.get("LOG_ERROR_FILE"):
        handlers.append(
            _handler(file_handler(config["LOG_ERROR_FILE"], config), json_formatter(config), logging.ERROR)
        )
    if config.get("LOG_EXCEPTIONS_FILE"):
        unhandled = _handler(
            file_handler(config["LOG_EXCEPTIONS_FILE"], config), json_formatter(config), logging.ERROR
        )
        unhandled.addFilter(UnhandledOnly())
        handlers.append(unhandled)
    if config.get("LOG_ASYNC"):
        queued = _Enqueue(queue.Queue(100_000))
        queued.listener = logging.handlers.QueueListener(queued.queue, *handlers, respect_handler_level=True)
        queued.listener.start()
        atexit.register(_close_queue, queued)
        handlers = [queued]
    if config.get("LOGSTASH_HOST"):
        handlers.append(_ship(config))
    window = config.get("LOG_REPEAT_WINDOW_SECONDS", 0)
    for handler in handlers:
        handler.addFilter(RequestContextFilter())  # runs in the request's thread, even when queued
        if window:
            handler.addFilter(RepeatFilter(handler, window, config.get("LOG_CLOCK") or time.monotonic))
        setattr(handler, OUR_HANDLER, True)
        root.addHandler(handler)
    root.setLevel(config["LOG_LEVEL"])
    # not in any line we write; the Logging HOWTO's "Optimization" switches skip them (the
    # process id stays: gunicorn's own log lines print it)
    logging._srcfile = None  # the caller's file, function and line: a stack walk per record
    logging.logThreads = logging.logMultiprocessing = False
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we write our own access line
