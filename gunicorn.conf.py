"""gunicorn settings for tokenpool (`gunicorn -c gunicorn.conf.py wsgi:app`).

Every value can be set from the environment; the defaults suit one container
behind nginx. Sync workers: nginx buffers slow clients, and each worker holds
one database connection at a time (connections = workers x (POOL_SIZE + overflow)).
"""

import gc
import os
import shutil
import signal
import threading

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * (os.cpu_count() or 1) + 1, 8)))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))  # above the 5 s statement timeout
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# a guard against slow leaks, not a routine: a worker serves 1,000+ requests/s, so 20,000
# restarted each one every ~20 s under load (a second of boot CPU, p99 stalls of ~350 ms)
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "1000000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "100000"))
# trust X-Forwarded-* only from nginx; the app's ProxyFix does the same by hop count
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
preload_app = False  # every worker builds its own app and database pool after the fork
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # the app writes one JSON access line
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "tokenpool"

# After SIGTERM a worker keeps serving this long with readiness failing, so the
# load balancer stops sending before the worker stops accepting.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "5"))


def on_starting(server):
    """Empty the Prometheus multiprocess directory: stale files from old pids lie."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def post_worker_init(worker):
    """Start the token manager; on SIGTERM: fail readiness at once, finish in-flight work, then exit.

    The sweeper starts as soon as the worker has loaded the app and sweeps at
    once, so `/health` knows the token manager before the first request.

    Also moves the loaded app (~110,000 objects) out of the garbage collector's
    reach (`gc.freeze`): a full collection of them took 33 ms, a pause that hit
    whichever requests were queued on that worker; the app's own objects live
    as long as the worker anyway.
    """
    from service.health.checks import draining
    from service.tokens.sweeper import start_sweeper

    start_sweeper(worker.wsgi)

    def stop(sig, frame):
        worker.handle_exit(sig, frame)
        os.write(worker.PIPE[1], b"1")  # wake the worker's select() so it exits now

    def drain(sig, frame):
        draining.set()
        threading.Timer(min(DRAIN_SECONDS, graceful_timeout / 2), stop, args=(sig, frame)).start()

    signal.signal(signal.SIGTERM, drain)
    gc.freeze()


def worker_exit(server, worker):
    """Stop the sweeper, send buffered monitoring figures, close database connections."""
    app = getattr(worker, "wsgi", None)
    sweeper = getattr(app, "extensions", {}).get("tokenpool.sweeper")
    if sweeper is not None:
        sweeper.stop()
    figures = getattr(app, "extensions", {}).get("tokenpool.monitoring")
    if hasattr(figures, "flush"):
        figures.flush()
    if app is not None:
        from service.extensions import db

        with app.app_context():
            db.engine.dispose()


# Imported here, not in child_exit: gunicorn calls that hook from its SIGCHLD
# handler, and a first import interrupted by a second SIGCHLD crashes the master.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import multiprocess
else:
    multiprocess = None


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics."""
    if multiprocess is not None:
        multiprocess.mark_process_dead(worker.pid)
