"""gunicorn settings for tokenpool (`gunicorn -c gunicorn.conf.py wsgi:app`).

Every value can be set from the environment; the defaults suit one container
behind nginx. Sync workers: nginx buffers slow clients, and each worker holds
one database connection at a time (connections = workers x (POOL_SIZE + overflow)).
The default worker class is gunicorn's sync worker with event streams held open by
threads of their own (service/gunicorn_worker.py); `sync` and `gthread` can be chosen.
"""

import gc
import os
import shutil
import signal
import sys
import threading
import time
import traceback


def _str(name: str, default: str) -> str:
    """The variable's value, or `default` when it is unset or blank (.env.example lists some blank)."""
    return os.environ.get(name, "").strip() or default


def _int(name: str, default):
    """`_str` as a whole number (`default` when unset or blank); anything else stops the start
    with one line naming the variable (`flask config check` shows the same line)."""
    value = _str(name, "")
    if not value:
        return default
    if not value.isdigit():
        sys.exit(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _float(name: str, default: float) -> float:
    """`_str` as a number (`default` when unset or blank); anything else stops the start."""
    value = _str(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        sys.exit(f"{name} must be a number, got {value!r}")


# PORT and REQUEST_TIMEOUT: aliases from the table in service/config.py (ALIASES); BIND and
# GUNICORN_TIMEOUT win when both are set. PORT alone binds every interface, as gunicorn does.
_port = _int("PORT", None)
bind = _str("BIND", "127.0.0.1:8000" if _port is None else f"0.0.0.0:{_port}")
workers = _int("WEB_CONCURRENCY", min(2 * (os.cpu_count() or 1) + 1, 8))
worker_class = _str("GUNICORN_WORKER_CLASS", "service.gunicorn_worker.StreamingSyncWorker")
threads = _int("GUNICORN_THREADS", 1)
# A worker silent this long is killed (gunicorn's HTML 500). No request can get near it: every
# wait for the database ends within DB_DEADLINE_SECONDS (docs/HEALTH.md, "Probe arithmetic").
timeout = _int("GUNICORN_TIMEOUT", _int("REQUEST_TIMEOUT", 30))
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# a guard against slow leaks, not a routine: a worker serves 1,000+ requests/s, so 20,000
# restarted each one every ~20 s under load (a second of boot CPU, p99 stalls of ~350 ms)
max_requests = _int("GUNICORN_MAX_REQUESTS", 1000000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 100000)
# Forwarded headers are trusted in one place: the app's ProxyFix, by the hop counts
# PROXY_FIX_X_FOR / PROXY_FIX_X_PROTO (service/app.py). gunicorn trusts none of them from
# anyone: by default it takes X-Forwarded-Proto, X-Forwarded-Ssl and X-Forwarded-Protocol from
# 127.0.0.1 as the scheme (a local client could fake HTTPS with PROXY_FIX_X_PROTO=0) and answers
# HTML 400 "Contradictory scheme headers" when they disagree. FORWARDED_ALLOW_IPS is not read.
forwarded_allow_ips = ""
secure_scheme_headers: dict = {}
forwarder_headers = ""
# Above nginx's limits (nginx/templates/nginx.conf.template: request line and each header line
# 4k, all header lines about 4 x 4k, X-Forwarded-For 1k), so through nginx every oversized
# request is refused by nginx in the JSON error shape and never by gunicorn's HTML 400/431.
# A client that reaches gunicorn directly can still get those (docs/PRODUCTION.md).
limit_request_line = 8190  # gunicorn's maximum
limit_request_fields = 4500
limit_request_field_size = 8190
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
preload_app = False  # every worker builds its own app and database pool after the fork
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # the app writes one JSON access line
errorlog = "-"
loglevel = _str("GUNICORN_LOG_LEVEL", "info")
proc_name = "tokenpool"

# After SIGTERM a worker keeps serving this long with readiness failing, so the
# load balancer stops sending before the worker stops accepting.
DRAIN_SECONDS = _float("DRAIN_SECONDS", 5.0)


def on_starting(server):
    """Stop at once on a bad setting; start with an empty Prometheus multiprocess folder.

    The app is built once in a throwaway child process before any socket is
    bound, and the metrics folder must have room for the workers: a bad
    setting prints the flask CLI's one line and gunicorn exits 1,
    instead of a master that restarts crashing workers forever. The master
    itself never imports the app (workers build their own after the fork).
    Stale metrics files from old pids lie, so the folder is emptied (before
    the check and again after it: the check's process writes some too).
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _empty_folder(directory)
    if _app_check_fails(server):
        if server.pidfile is not None:
            server.pidfile.unlink()
        sys.exit(1)
    if directory:
        _empty_folder(directory)


def _app_check_fails(server) -> bool:
    """Build the app in a forked child; True when that fails (its one line is on stderr).

    The master imports the service's modules first (no app, no connection, no
    thread): the check's child and every worker fork with them loaded, so the
    check costs no second import (2.4 s of CPU) and workers boot faster. Code
    changes therefore need a restart, not a HUP (docs/DEPLOYMENT.md).
    """
    from service.config import ConfigError

    gc.freeze()  # the modules live as long as the master: its exit then takes no 2 s collection
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            server.app.wsgi()
            from service.metrics_storage import check_at_start

            check_at_start()
        except SystemExit as exc:  # wsgi.py has printed its one line
            code = exc.code if isinstance(exc.code, int) else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except ConfigError as exc:  # the metrics folder's check
            print(f"configuration error: {exc}", file=sys.stderr)
            code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) != 0


def _empty_folder(directory: str) -> None:
    """Remove what is inside `directory` (it may be a mount point), creating it if missing.

    Best effort: a folder that cannot be created or written is named by the app's own check.
    """
    try:
        os.makedirs(directory, exist_ok=True)
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def when_ready(server):
    """Before the first worker: a SIGTERM to this master will mean the whole instance stops (drain)."""
    from service.drain import watch_master

    watch_master(server)


def post_worker_init(worker):
    """Start the background threads; on SIGTERM drain: readiness 503 at once, then stop accepting, then exit.

    The token manager and the event publisher (service/background.py) start as
    soon as the worker has loaded the app; the sweeper sweeps at once, so
    `/health` knows the token manager before the first request.

    The drain: `DRAIN_SECONDS` (at most half of graceful_timeout) of normal
    service with readiness failing, then `service.drain.finish` holds new
    connections back, takes every connection already queued, lets go of the
    port (new connections are refused) and ends the worker's loop; the worker
    serves what it took (`serve_accepted`) and exits. A connection that
    reached the instance is served or refused, never reset (service/drain.py).

    Also moves the loaded app (~110,000 objects) out of the garbage collector's
    reach (`gc.freeze`): a full collection of them took 33 ms, a pause that hit
    whichever requests were queued on that worker; the app's own objects live
    as long as the worker anyway.
    """
    from service.background import start_background
    from service.drain import finish, instance_stopping, retire, serve_accepted
    from service.health.checks import draining

    start_background(getattr(worker, "wsgi", None))  # the loaded app (absent in a bare hook test)

    def drain(sig, frame):
        if draining.is_set():
            return  # a second SIGTERM changes nothing
        draining.set()
        wait = min(DRAIN_SECONDS, graceful_timeout / 2)
        if instance_stopping():
            threading.Timer(wait, finish, args=(worker, time.monotonic() + graceful_timeout - 1)).start()
        else:  # retired alone (HUP, fewer workers): the master and the other workers keep the port
            threading.Timer(wait, retire, args=(worker,)).start()

    loop = worker.run

    def run():
        loop()
        serve_accepted(worker)

    worker.run = run
    signal.signal(signal.SIGTERM, drain)
    gc.freeze()


def worker_exit(server, worker):
    """End held event streams, stop the background threads, send buffered monitoring figures,
    close database connections."""
    app = getattr(worker, "wsgi", None)
    if app is None:  # the worker never loaded the app
        return
    if hasattr(worker, "end_streams"):  # service.gunicorn_worker.StreamingSyncWorker
        worker.end_streams(timeout=2.0)
    from service.background import stop_background
    from service.extensions import db
    from service.state import app_state

    stop_background(app)
    state = app_state(app)
    figures = getattr(state, "monitoring", None)  # set unless monitoring failed to start
    if hasattr(figures, "flush"):  # a BufferedStore (REDIS_URL): what it has not sent yet
        figures.flush()
    with app.app_context():
        db.engine.dispose()


# Imported here, not in child_exit: gunicorn calls that hook from its SIGCHLD
# handler, and a first import interrupted by a second SIGCHLD crashes the master.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    from service.metrics_storage import fold_dead_process
else:
    GunicornPrometheusMetrics = fold_dead_process = None


def child_exit(server, worker):
    """Drop a dead worker's live gauges; fold its counters into the archive (the folder stays bounded).

    The first step is prometheus-flask-exporter's documented gunicorn hook
    (prometheus_client's `mark_process_dead`: the live gauges' files go);
    `fold_dead_process` then moves the rest of the worker's samples into the
    archive files, so the folder does not grow with restarts.
    """
    if GunicornPrometheusMetrics is not None:
        GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
        fold_dead_process(worker.pid)
