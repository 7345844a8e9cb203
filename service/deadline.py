"""The database deadline: a client-side bound on every wait for PostgreSQL.

PostgreSQL's `statement_timeout` and `lock_timeout` run on the server: a frozen,
stopped or black-holed server never fires them, and the kernel of a SIGSTOPped
host still acknowledges TCP, so keepalives do not end the wait either. The
client therefore keeps a deadline of its own (`DB_DEADLINE_SECONDS`):

- `Deadline.budget()` sets the deadline of the database work inside it: the
  request's (its start plus `DB_DEADLINE_SECONDS`, shared by every transaction
  of the request), or one given (health checks, the sweeper). Commands and
  other work outside a request have none unless they ask.
- `BoundedConnection` (psycopg 3) waits on its socket, while connecting and
  for every statement, only until that deadline; past it the connection is
  closed, so the pool discards it, and `DeadlineExceeded` is raised.
- `BoundedQueuePool` waits for a free pooled connection only as long as the
  budget lasts.
- `Deadline.fit_server_timeouts` keeps the server's statement and lock timeouts
  just under the remaining budget, so a lock wait ends on the server (which
  keeps the connection usable and frees the backend) before the client gives up.
- After the database stalled (a budget spent waiting for it), database work in
  this process fails at once for `STALL_COOLDOWN_SECONDS`: queued requests and
  probes behind a stuck worker do not each wait a whole budget.

psycopg waits through `Connection.wait` (statements, commits, rollbacks) and
`Connection._connect_gen` (connecting); both are overridden here. See
psycopg's `waiting` module: a wait generator is sent `READY_NONE` when the
poll interval passes without I/O, which is where the deadline is checked.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

import psycopg
from flask import has_request_context
from psycopg import errors as pg_errors
from psycopg import waiting
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import QueuePool

from .errors import ServiceUnavailable

STALL_COOLDOWN_SECONDS = 1.0
_WAIT_INTERVAL = 0.1  # psycopg's own poll interval: the deadline is checked at least this often

# the absolute deadline (time.perf_counter seconds) of the database work of this thread
_deadline: ContextVar[float | None] = ContextVar("tokenpool_db_deadline", default=None)
_clock = time.perf_counter
# when this thread's current request began (set by its first hook), readable without g's proxy
_request_started: ContextVar[float] = ContextVar("tokenpool_request_started", default=0.0)


def request_began(at: float) -> None:
    """Note the `time.perf_counter()` at which this thread's request began: its budget starts there."""
    _request_started.set(at)


class DeadlineExceeded(psycopg.OperationalError):
    """The database did not answer within the deadline; the connection was closed."""


class DatabaseStalled(ServiceUnavailable):
    """The database stalled moments ago: answered at once instead of waiting again."""

    def __init__(self) -> None:
        super().__init__("The database is unavailable. Please retry shortly.", reason="database_error")


def remaining() -> float | None:
    """Seconds left before this thread's database deadline, or None without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - _clock()


def _until(gen, deadline: float):
    """Drive psycopg wait generator `gen`, raising DeadlineExceeded once `deadline` passes.

    The first step runs unchecked: it does no waiting (a generator that needs
    no I/O, such as a rollback outside a transaction, finishes here).
    """
    try:
        state = next(gen)
        while True:
            if _clock() >= deadline:
                raise DeadlineExceeded("the database did not answer within the deadline")
            state = gen.send((yield state))
    except StopIteration as done:
        return done.value


class BoundedConnection(psycopg.Connection):
    """A psycopg connection whose waits end at this thread's database deadline.

    `server_timeout_ms`: the session's statement and lock timeout, as set at
    connect time (None when unknown, e.g. through PgBouncer).
    """

    server_timeout_ms: int | None = None

    def wait(self, gen, interval: float = _WAIT_INTERVAL):
        """psycopg's wait, ended at this thread's deadline: raises DeadlineExceeded (and closes) past it."""
        deadline = _deadline.get()
        if deadline is None:
            return super().wait(gen, interval)
        try:
            return waiting.wait(_until(gen, deadline), self.pgconn.socket, interval=interval)
        except DeadlineExceeded:
            # mid-protocol: the answer may still come, so the connection can never be reused
            self.close()
            raise

    @classmethod
    def _connect_gen(cls, conninfo: str = "", *, timeout: float = 0.0):
        left = remaining()
        if left is not None:
            if left <= 0:
                raise DeadlineExceeded("no time left to connect to the database")
            timeout = min(timeout, left) if timeout else left
        return super()._connect_gen(conninfo, timeout=timeout)


class BoundedQueuePool(QueuePool):
    """SQLAlchemy's QueuePool, whose wait for a free connection ends with the budget.

    QueuePool reads `self._timeout` when it waits (sqlalchemy/pool/impl.py,
    `_do_get`); tests/resilience/test_db_deadline.py fails if that changes.
    """

    @property
    def _timeout(self) -> float:
        left = remaining()
        return self._configured_timeout if left is None else max(0.0, min(self._configured_timeout, left))

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self._configured_timeout = value


_STALLS = (DeadlineExceeded, pg_errors.ConnectionTimeout)  # the client gave up waiting
_SERVER_TIMEOUTS = (pg_errors.QueryCanceled, pg_errors.LockNotAvailable)  # the server gave up


def is_server_timeout(exc: BaseException | None) -> bool:
    """Whether a driver error is the server's statement or lock timeout."""
    return isinstance(exc, _SERVER_TIMEOUTS)


def note_server_timeout(error: BaseException, dbapi_conn, elapsed: float | None) -> None:
    """Add a note to `error`, a server timeout's (shown with its traceback in the error's log
    line): how long the statement ran (`elapsed` seconds, None when not timed), the session
    timeout this process believes the connection has (`BoundedConnection.server_timeout_ms`;
    a transaction's SET LOCAL is not in it), and the budget left. A statement ended far sooner
    than both says the belief was wrong."""
    left = remaining()
    ran = "?" if elapsed is None else f"{elapsed * 1000:.0f}"
    error.add_note(
        f"server timeout after {ran} ms; session timeout as recorded:"
        f" {getattr(dbapi_conn, 'server_timeout_ms', None)} ms; budget left:"
        f" {'none' if left is None else f'{left:.3f} s'}"
    )


class Deadline:
    """One app's database deadline settings and its process-wide stall state.

    `seconds`: DB_DEADLINE_SECONDS. `margin`: how long before the client's
    deadline the server's timeouts fire (a tenth of the time left, at most
    0.25 s; for a full budget). `statement_cap_ms`: DB_STATEMENT_TIMEOUT_MS
    (0: no cap). `session_state`: False through a transaction-pooling PgBouncer,
    where nothing set on a session (startup options, SET) reaches the next
    transaction: every transaction then sets its timeouts itself.
    """

    def __init__(self, seconds: float, statement_cap_ms: int, *, session_state: bool = True) -> None:
        self.seconds = seconds
        self.session_state = session_state
        self.margin = _margin(seconds)
        self.statement_cap_ms = statement_cap_ms
        self.stalled_until = 0.0

    def session_timeout_ms(self) -> int:
        """The statement and lock timeout a new connection starts with: a full budget's."""
        return self._server_timeout_ms(self.seconds)

    def _server_timeout_ms(self, left: float) -> int:
        ms = int((left - _margin(left)) * 1000)
        return min(ms, self.statement_cap_ms) if self.statement_cap_ms else ms

    def budget(self, seconds: float | None = None) -> Budget:
        """The deadline for the database work of a `with` block.

        `seconds` None: the request's budget (its start plus DB_DEADLINE_SECONDS)
        inside a request, none of its own outside one (commands, migrations).
        An enclosing budget that ends sooner wins. Entering raises
        DatabaseStalled while the database is known to be stalled.
        """
        return Budget(self, seconds)

    def stalled(self) -> None:
        """Note that the database stalled: fail fast for STALL_COOLDOWN_SECONDS."""
        self.stalled_until = _clock() + STALL_COOLDOWN_SECONDS

    def is_stall(self, exc: BaseException, left: float | None) -> bool:
        """Whether `exc` says the database did not answer within the budget."""
        if isinstance(exc, PoolTimeoutError):
            return True
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if isinstance(orig, _STALLS):
            return True
        # a server-side timeout is a stall when it spent the budget, not when a cap cut one statement
        return is_server_timeout(orig) and left is not None and left < 2 * self.margin

    def may_retry(self) -> bool:
        """Whether enough of the budget is left for another attempt."""
        left = remaining()
        return left is None or left >= 2 * self.margin

    def server_timeout_ms_for(self, left: float) -> int:
        """The statement and lock timeout for work with `left` seconds of budget.

        Raises DBAPIError (DeadlineExceeded) when the budget is too short to start.
        """
        target = self._server_timeout_ms(left)
        if target < 1:
            exc = DeadlineExceeded("no time left for the database")
            raise DBAPIError.instance(None, None, exc, psycopg.Error)
        return target

    def fit_server_timeouts(self, conn, dbapi_conn, *, local: bool) -> None:
        """Keep the server's statement and lock timeouts just under the remaining budget.

        `conn` runs the statement (a SQLAlchemy Connection or an AutocommitConnection);
        `dbapi_conn` is its psycopg connection. `local`: for this transaction only
        (SET LOCAL), else for the session. Sends nothing when the session's
        timeouts already fit, which is the common case. Raises DBAPIError
        (DeadlineExceeded) when the budget is too short to start.
        """
        left = remaining()
        if left is None:
            return
        target = self.server_timeout_ms_for(left)
        current = getattr(dbapi_conn, "server_timeout_ms", None)
        margin_ms = _margin(left) * 1000
        if current is not None and target - margin_ms <= current <= target + margin_ms / 2:
            return
        value = str(target)
        conn.exec_driver_sql(
            "SELECT set_config('statement_timeout', %s, %s) AS statement_timeout,"
            " set_config('lock_timeout', %s, %s) AS lock_timeout",
            (value, local, value, local),
        )
        if not local and isinstance(dbapi_conn, BoundedConnection):
            dbapi_conn.server_timeout_ms = target


def _margin(seconds: float) -> float:
    """How long before a deadline `seconds` away the server's timeouts should fire."""
    return min(0.25, seconds / 10)


class Budget:
    """See `Deadline.budget`."""

    __slots__ = ("deadline", "seconds", "token")

    def __init__(self, deadline: Deadline, seconds: float | None) -> None:
        self.deadline, self.seconds = deadline, seconds
        self.token: Token[float | None] | None = None

    def __enter__(self) -> Budget:
        state = self.deadline
        now = _clock()
        if now < state.stalled_until:
            raise DatabaseStalled()
        ends: float | None
        if self.seconds is not None:
            ends = now + self.seconds
        else:
            ends = (_request_started.get() or now) + state.seconds if has_request_context() else None
        outer = _deadline.get()
        self.token = _deadline.set(outer if ends is None or (outer is not None and outer < ends) else ends)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self.deadline.is_stall(exc, remaining()):
            self.deadline.stalled()
        if self.token is not None:
            _deadline.reset(self.token)
