"""Real processes for tests: gunicorn instances, throwaway Redis and PostgreSQL servers.

Throwaway servers listen on free loopback ports and are stopped by the test
that started them; the machine's shared servers are never touched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from tests.web import http_get

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _load_nginx_render():
    """nginx/render.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("tokenpool_nginx_render", ROOT / "nginx" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_nginx_render()


def _ephemeral_ports() -> range:
    """The kernel's ephemeral port range (Linux: ip_local_port_range; its default if unreadable)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a test is about to start.

    Chosen below the kernel's ephemeral range, at random, never twice in one
    process. A port from bind(0) comes from the range the kernel also gives to
    outgoing connections, so between choosing it and the server binding it a
    connection could take it (a CI run lost a gunicorn to "Address already in
    use" while the other instance's workers were connecting to PostgreSQL).
    Below the range only other listeners can collide, which the bind check
    and the randomness make rare.
    """
    ephemeral = _ephemeral_ports()
    candidates = range(10000, ephemeral.start) if ephemeral.start > 11000 else range(ephemeral.stop, 65536)
    chooser = random.SystemRandom()
    for _ in range(1000):
        port = chooser.choice(candidates)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {candidates}")


def wait_for(predicate, timeout: float = 20, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def worker_pids(master_pid: int) -> list[int]:
    """The pids of the processes `master_pid` has forked and not yet reaped (a gunicorn's workers)."""
    out = subprocess.run(["ps", "--ppid", str(master_pid), "-o", "pid="], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free port, with its own environment."""

    def __init__(self, env: dict, workers: int = 2, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "APP_ENV": "production",
            "SECRET_KEY": "test-secret",
            "LOG_FORMAT": "json",
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(workers),
            "DRAIN_SECONDS": "3",
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
            # the run's connections carry its name, so its connection guard counts these too
            "PGAPPNAME": os.environ.get("PGAPPNAME", "tokenpool-tests"),
            **env,
        }
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="gunicorn-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self, wait: str = "/healthz") -> Gunicorn:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:  # or gone: a master that exited is not waited for
            return self.proc.poll() is not None or http_get(self.url + wait, timeout=1)[0] == 200

        def all_forked() -> bool:  # gunicorn forks its workers one by one, with a random pause
            return self.proc.poll() is not None or len(worker_pids(self.proc.pid)) >= self.workers

        try:  # a loaded 2-core machine has taken over 30 s to start two instances at once
            wait_for(up, 60, what=f"gunicorn on {self.port}")
            wait_for(all_forked, 30, what=f"gunicorn's {self.workers} workers on {self.port}")
            if self.proc.poll() is not None:
                raise TimeoutError(f"gunicorn on {self.port} exited while starting")
        except TimeoutError as timeout:
            code = self.proc.poll()
            self.stop()  # a master that never came up is not left running, nor its log open
            tail = self.log_path.read_bytes()[-2000:].decode(errors="replace")
            raise TimeoutError(f"{timeout}; exit code {code}; its log ends:\n{tail}") from None
        return self

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def describe(self, lines: int = 10) -> str:
        """For a failure message: the master's exit code, its process tree (state and kernel
        wait channel of each process), gunicorn's own log lines (boots, exits, signals) and the
        last `lines` lines of the app's, each cut to 300 characters."""
        tree = subprocess.run(
            [
                "ps",
                "-o",
                "pid,ppid,stat,wchan:32,etime,args",
                "--ppid",
                str(self.proc.pid),
                "-p",
                str(self.proc.pid),
            ],
            capture_output=True,
            text=True,
        ).stdout
        logged = self.log_lines()
        own = "\n".join([line for line in logged if line.startswith("[")][-40:])
        tail = "\n".join(line[:300] for line in logged[-lines:])
        return f"master exit code {self.proc.poll()}; processes:\n{tree}gunicorn:\n{own}\nlog ends:\n{tail}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def gunicorn_refuses(env: dict, timeout: float = 60) -> tuple[list[str], str]:
    """Run `gunicorn -c gunicorn.conf.py wsgi:app` expecting it to refuse its settings.

    `env` over production defaults (a free BIND, two workers). Asserts exit
    status 1, no traceback and no worker booted; returns (its lines naming a
    configuration error, its whole output).
    """
    full = {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "APP_ENV": "production",
        "SECRET_KEY": "test-secret",
        "BIND": f"127.0.0.1:{free_port()}",
        "WEB_CONCURRENCY": "2",
        **env,
    }
    done = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "Booting worker" not in output, output
    return [line for line in output.splitlines() if "configuration error" in line], output


class ThrowawayRedis:
    """A private redis-server on a free port, nothing on disk."""

    def __init__(self, port: int | None = None, args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args  # more redis-server options (--replicaof, --tls-port ...)
        self.proc: subprocess.Popen | None = None

    def start(self) -> ThrowawayRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 0.2).close() or True, 10)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class ThrowawayPostgres:
    """A private PostgreSQL cluster (initdb in a temp dir, run as the postgres user)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-throwaway-"))
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_postgres, *args], check=True, capture_output=True)

    def init(self) -> ThrowawayPostgres:
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        return self

    def start(self) -> ThrowawayPostgres:
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        out = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout
        return [postmaster, *map(int, out.split())]

    def freeze(self) -> list[int]:
        """SIGSTOP the whole cluster: connections stay open, nothing answers. Returns the pids."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        """SIGCONT exactly the processes `freeze` stopped."""
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayPgBouncer:
    """A private PgBouncer in transaction pooling mode in front of the PostgreSQL on `server_port`.

    A ThrowawayPostgres's port, or the shared server's (5432; it trusts the
    postgres user on loopback). Its own config file in a temp dir, a free port,
    trust auth, every database of the server; `pool_size` server connections per
    database. Run in the foreground (as the postgres user when we are root:
    PgBouncer refuses root) and stopped by its pid.
    """

    def __init__(self, server_port: int, pool_size: int = 2):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-throwaway-"))
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.ini = self.dir / "pgbouncer.ini"
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        self.ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            "admin_users = postgres\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        self._as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        if os.geteuid() != 0:
            self._as_postgres = []
        else:
            shutil.chown(self.dir, "postgres", "postgres")
            for path in self.dir.iterdir():
                shutil.chown(path, "postgres", "postgres")
        self.proc: subprocess.Popen | None = None

    def start(self) -> ThrowawayPgBouncer:
        self.proc = subprocess.Popen(
            [*self._as_postgres, "pgbouncer", str(self.ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 0.2).close() or True, 10)
        return self

    def url_for(self, database_url: str) -> str:
        """`database_url` (a database on the server behind) with PgBouncer's host and port."""
        name = database_url.rsplit("/", 1)[1]
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def show(self, what: str) -> list[dict]:
        """The rows of `SHOW <what>` (STATS, POOLS, SERVERS ...) on PgBouncer's admin console."""
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer"
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute(f"SHOW {what}")  # ClientCursor: the console speaks simple queries only
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # setpriv execs: this pid is PgBouncer itself
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def json_lines(lines) -> list[dict]:
    """The JSON objects among log lines (gunicorn's own lines are plain text)."""
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


class Nginx:
    """An nginx master in the foreground on 127.0.0.1:<free port>, everything under `directory`."""

    def __init__(self, directory: Path, upstreams: list[str], **overrides: str):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # nginx's workers (not root) write large buffered answers there: pytest's own folders
        # are closed to them
        self.temp = Path(tempfile.mkdtemp(prefix="tokenpool-nginx-"))
        self.temp.chmod(0o777)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = " ".join(f"server {u} max_fails=3 fail_timeout=10s;" for u in upstreams)
        values = render.values_from(
            {},
            LISTEN_PORT=f"127.0.0.1:{self.port}",
            UPSTREAMS=servers,
            NGINX_PID=str(self.dir / "nginx.pid"),
            NGINX_ERROR_LOG=str(self.dir / "error.log"),
            NGINX_ACCESS_LOG=str(self.dir / "access.log"),
            NGINX_TEMP_DIR=str(self.temp),
        )
        values.update(overrides)
        render.render_all(self.dir / "conf", values)
        self.conf = self.dir / "conf" / "nginx.conf"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        stderr_path = self.dir / "nginx.stderr"
        with open(stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [
                    NGINX,
                    "-p",
                    str(self.dir),
                    "-e",
                    str(self.dir / "error.log"),
                    "-c",
                    str(self.conf),
                    "-g",
                    "daemon off;",
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {stderr_path.read_text()} {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)

    def access_log(self) -> list[dict]:
        path = self.dir / "access.log"
        return json_lines(path.read_text().splitlines()) if path.exists() else []

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""
