"""`make bench`: the four performance targets (docs/PERFORMANCE.md), measured side by side.

Starts gunicorn targets (2 workers each: the bare apps sync, the service
gunicorn.conf.py's default worker) and drives them in turn,
alternating the order over several rounds so drift and neighbours' noise hit
every target alike:

  hello      bench/hello_app.py          GET /hello (bare Flask)
  raw        bench/raw_app.py            POST /activate (psycopg 3, one SQL call), 100-token pool
  raw-1m     bench/raw_app.py            the same on the 1,000,000-token pool (is 3a the database?)
  svc-100    the service, every feature  on a 100-token pool (evicts on every activation)
  svc-100-sync  svc-100 on plain sync workers (GUNICORN_WORKER_CLASS=sync), for target 8
  svc-1m     the service, every feature  on a 1,000,000-token pool
  svc-100-pgb  svc-100 through PgBouncer in transaction mode (DB_PGBOUNCER=true), started here

Two cases add load beside a target: `svc_activate_100_streams` runs svc-100's
activation while 100 event-stream clients (bench/stream_clients.py) hold their
streams open and read every event, and
`svc_get_token_history` reads one token of svc-1m that has 3,000,000 usages
(written with SQL before the start).

Peak rates come from wrk (closed loop, Lua scripts posting random user ids);
latency at a given rate comes from bench/loadgen.py (open loop, fixed rate).
Then what PostgreSQL and Redis on this machine take by themselves (capacity
inputs of docs/DEPLOYMENT.md): pgbench with the activation function and with
its built-in TPC-B-like and select-only scripts, redis-benchmark with the
limiter's one-round-trip Lua hit, INCR and PING.
Prints medians, spreads and PASS/FAIL per target; writes the raw numbers to
bench/results/<timestamp>.json. Needs wrk (`apt-get install -y wrk`), pgbouncer,
pgbench and redis-benchmark (the postgresql and redis-server packages bring
them), the PostgreSQL at BENCH_PG_URL and the Redis at BENCH_REDIS_URL (DB 15,
flushed). See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from loadgen import run_fixed_rate  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.procs import ThrowawayPgBouncer, free_port  # noqa: E402

VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")

# (case name, target, path, wrk script); the order rotates every round. Cases that targets 6
# and 8 compare run next to each other: this host's speed has drifted by half within minutes,
# and two cases a dozen runs apart then measure the drift as much as the difference.
CASES = [
    ("hello", "hello", "/hello", "get.lua"),
    ("raw_activate", "raw", "/activate", "activate.lua"),
    ("raw_activate_1m", "raw-1m", "/activate", "activate.lua"),
    # the same on plain sync workers (the default worker's loop, no stream threads): target 8
    ("svc_activate_100_sync", "svc-100-sync", "/api/tokens/activate", "activate.lua"),
    ("svc_activate_100", "svc-100", "/api/tokens/activate", "activate.lua"),
    # the same activation while 100 event-stream clients hold streams open: target 6
    ("svc_activate_100_streams", "svc-100", "/api/tokens/activate", "activate.lua"),
    ("svc_activate_1m", "svc-1m", "/api/tokens/activate", "activate.lua"),
    ("svc_activate_100_pgbouncer", "svc-100-pgb", "/api/tokens/activate", "activate.lua"),
    # the same service and database as svc_activate_100: a random one of POOLS pools per request
    ("svc_activate_pools", "svc-100", "/api/pools/p0/tokens/activate", "activate_pools.lua"),
    ("svc_index", "svc-100", "/api", "get.lua"),
    ("svc_summary", "svc-100", "/api/tokens/summary", "get.lua"),
    ("svc_list_1m", "svc-1m", "/api/tokens?limit=100", "get.lua"),
    # one token with HISTORY_ROWS usages (its path is set once the history exists)
    ("svc_get_token_history", "svc-1m", "/api/tokens/{history_token}", "get.lua"),
]
STREAM_CLIENTS = 100
HISTORY_ROWS = 3_000_000

DATABASE_OF = {
    "raw": "small",
    "svc-100": "small",
    "svc-100-sync": "small",
    "raw-1m": "large",
    "svc-1m": "large",
    "svc-100-pgb": "small",
}
PGBOUNCER_POOL = 4  # server connections for the PgBouncer target's 2 workers (sync: one query at a time each)

TARGETS_SPEC = [
    # (id, what, threshold, kind)
    ("1", "activation: full stack / raw SQL app (100 tokens)", 0.60, "ratio>="),
    ("2", "GET /api (trivial, rate limited) full stack / bare hello", 0.70, "ratio>="),
    ("3a", "activation: 1,000,000 tokens / 100 tokens", 0.90, "ratio>="),
    ("3b", "GET /api/tokens?limit=100 on 1M tokens, p99 ms at half peak", 20.0, "ms<="),
    ("4", "activation p99 ms at half of peak rate (100 tokens)", 25.0, "ms<="),
    ("5", "activation: through PgBouncer / direct (100 tokens)", 0.85, "ratio>="),
    ("6", f"activation: with {STREAM_CLIENTS} event streams open / none (100 tokens)", 0.90, "ratio>="),
    ("7", f"GET /api/tokens/<id> with {HISTORY_ROWS:,} usages / GET /api/tokens/summary", 0.80, "ratio>="),
    ("8", "activation: the default worker / plain sync workers (100 tokens)", 0.90, "ratio>="),
    ("9", "activation: one of 1,000 pools of 100 tokens / default pool", 0.90, "ratio>="),
]
POOLS, POOL_TOKENS = 1000, 100  # named pools p0..p999 beside the default pool of the 100-token database


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- infrastructure ------------------------------------------------------------


def admin_sql(statement: str, dbname: str | None = None) -> None:
    import psycopg

    url = PG_ADMIN_URL if dbname is None else PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def host_counters() -> dict:
    """Machine-wide counters to tell a slow round's cause: CPU taken by the VM's host (steal) and
    idle waiting for disk (iowait), in ms; PostgreSQL checkpoints begun; TCP segments sent again
    (tail-loss probes fire ~200 ms after a lone segment goes unanswered)."""
    import psycopg

    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").fetchone()
    return {
        "iowait_ms": fields[4] * 1000 / ticks,
        "steal_ms": fields[7] * 1000 / ticks,
        "checkpoints": row[0],
        "tcp_retransmits": _tcp_retransmits(),
    }


def _tcp_retransmits() -> int:
    """RetransSegs of /proc/net/snmp: a header line of names, then a line of values."""
    lines = Path("/proc/net/snmp").read_text().splitlines()
    names, values = (line.split() for line in lines if line.startswith("Tcp:"))
    return int(values[names.index("RetransSegs")])


def counters_during(before: dict) -> dict:
    after = host_counters()
    return {key: round(after[key] - before[key], 1) for key in before}


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


WORKERS, THREADS, GEVENT = 2, 1, False  # set from --workers / --gunicorn-threads / --gevent


def worker_class() -> str:
    """The gunicorn worker class of the service targets: "" for gunicorn.conf.py's default (sync,
    each event stream in a thread of its own; blank GUNICORN_WORKER_CLASS means it), gthread
    (threads > 1) or gevent."""
    return "gevent" if GEVENT else "gthread" if THREADS > 1 else ""


def service_env(db_url: str, port: int, prom_dir: Path) -> dict:
    """Production settings, every feature on, limits too high to trigger."""
    return os.environ | {
        "APP_ENV": "production",
        "SECRET_KEY": "bench-not-secret",
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_PER_MINUTE": "100000000",
        "ENABLE_RATE_LIMITING": "true",
        "METRICS_ENABLED": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(WORKERS),
        "GUNICORN_WORKER_CLASS": worker_class(),
        "GUNICORN_THREADS": str(THREADS),
        # the default worker holds event streams by itself (blank: unset); the others as told
        "EVENT_STREAM_SECONDS": "300" if worker_class() else "",
        "EVENT_STREAMS_PER_WORKER": str(STREAM_CLIENTS),  # the clients may all reach one worker
        "SWEEPER_ENABLED": os.environ.get("BENCH_SWEEPER", "true"),
        "DRAIN_SECONDS": "0",  # only shortens the shutdown at the end of the run
    }


def prepare_database(name: str, size: int, workdir: Path, *, pools: bool = False) -> str:
    """Create, migrate, seed (with `pools`: add the named pools too) and VACUUM ANALYZE a
    fresh database; return its SQLAlchemy URL."""
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    env = os.environ | {
        "APP_ENV": "production",
        "SECRET_KEY": "bench-not-secret",
        "DATABASE_URL": url,
        "SWEEPER_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    flask = [str(VENV_BIN / "flask"), "--app", "wsgi"]
    with open(workdir / f"prepare-{name}.log", "w") as out:
        for args in (["db", "upgrade"], ["tokens", "seed", "--size", str(size)]):
            subprocess.run(flask + args, cwd=ROOT, env=env, stdout=out, stderr=out, check=True)
    if pools:  # target 5: named pools beside the default one, in the same tables
        add_pools(name)
    # a freshly seeded table would otherwise be vacuumed and analysed mid-run by autovacuum
    admin_sql("VACUUM ANALYZE tokens", dbname=name)
    admin_sql("CHECKPOINT")
    return url


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_pools(dbname: str) -> None:
    """POOLS pools p0..p(POOLS-1) of POOL_TOKENS tokens each, policy evict, 120 s leases."""
    admin_sql(
        "INSERT INTO pools (name, size, lifetime_seconds, policy, max_queue, max_wait_seconds,"
        " fencing_token, created_at)"
        f" SELECT 'p' || n, {POOL_TOKENS}, 120, 'evict', 1000, 300, 0, now()"
        f" FROM generate_series(0, {POOLS - 1}) n",
        dbname=dbname,
    )
    admin_sql(
        "INSERT INTO tokens (id, pool_id, expires_at, created_at)"
        " SELECT gen_random_uuid(), p.id, 'epoch', now() FROM pools p, generate_series(1, p.size)"
        " WHERE p.name <> 'default'",
        dbname=dbname,
    )


class Target:
    """One gunicorn master in its own process group, logs to a file."""

    def __init__(self, name: str, argv: list[str], env: dict, port: int, probe: str, workdir: Path):
        self.name, self.port, self.probe = name, port, probe
        self.proxy_pid: int | None = None  # a process in front of its database (PgBouncer)
        self.log_path = workdir / f"{name}.log"
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=open(self.log_path, "w"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.base + self.probe, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far (user + system) by the gunicorn master and workers, and by the
        target's `proxy` (PgBouncer) when it has one."""
        used = {"service": sum(map(process_cpu_seconds, [self.proc.pid, *self.worker_pids()]))}
        if self.proxy_pid:
            used["pgbouncer"] = process_cpu_seconds(self.proxy_pid)
        return used

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_targets(
    args, workdir: Path, small_url: str, large_url: str, bouncer: ThrowawayPgBouncer
) -> dict[str, Target]:
    gunicorn = str(VENV_BIN / "gunicorn")
    bare = [gunicorn, "-c", str(BENCH / "gunicorn_bare.conf.py"), "-w", str(WORKERS)]
    # the default worker's loop is sync's (the bare apps have no stream to hand to a thread)
    bare += ["-k", worker_class() or "sync"]
    bare += ["--threads", str(THREADS)] if THREADS > 1 else []
    targets = {}
    port = free_port()
    targets["hello"] = Target(
        "hello",
        bare + ["-b", f"127.0.0.1:{port}", "bench.hello_app:app"],
        dict(os.environ),
        port,
        "/hello",
        workdir,
    )
    for name, url in (("raw", small_url), ("raw-1m", large_url)):
        port = free_port()
        targets[name] = Target(
            name,
            bare + ["-b", f"127.0.0.1:{port}", "bench.raw_app:app"],
            os.environ | {"DATABASE_URL": url},
            port,
            "/",
            workdir,
        )
    pooled = {"DB_PGBOUNCER": "true"}
    for name, url, extra in (
        ("svc-100", small_url, {}),
        ("svc-100-sync", small_url, {"GUNICORN_WORKER_CLASS": "sync", "EVENT_STREAM_SECONDS": "0"}),
        ("svc-1m", large_url, {}),
        ("svc-100-pgb", bouncer.url_for(small_url), pooled),
    ):
        port = free_port()
        prom = workdir / f"prometheus-{name}"
        prom.mkdir()
        targets[name] = Target(
            name,
            [gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"],
            service_env(url, port, prom) | extra,
            port,
            "/health/ready",
            workdir,
        )
    targets["svc-100-pgb"].proxy_pid = bouncer.proc.pid
    return targets


def wait_all(targets: dict[str, Target]) -> None:
    for t in targets.values():
        if t.name.startswith("raw"):  # no GET route: any HTTP answer means it is up
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(t.base + "/", timeout=2)
                except urllib.error.HTTPError:
                    break
                except OSError:
                    if time.monotonic() > deadline or t.proc.poll() is not None:
                        raise RuntimeError(f"raw app not ready; see {t.log_path}") from None
                    time.sleep(0.3)
        else:
            t.wait_ready()


# --- wrk -----------------------------------------------------------------------

RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def run_wrk(url: str, script: str, *, duration: float, connections: int, threads: int) -> dict:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(BENCH / script),
        url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    text = proc.stdout
    raw = next(
        (line[len("BENCH_JSON ") :] for line in text.splitlines() if line.startswith("BENCH_JSON ")), None
    )
    if proc.returncode != 0 or raw is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or text}")
    data = json.loads(raw)
    match = RPS_RE.search(text)
    non2xx = NON2XX_RE.search(text)
    errors = data["errors"]
    return {
        "command": " ".join(argv),
        "rps": float(match.group(1)) if match else data["requests"] / (data["duration_us"] / 1e6),
        "requests": data["requests"],
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "latency_ms": {k: v / 1000 for k, v in data["latency_us"].items()},
    }


# --- statistics ----------------------------------------------------------------


def spread(values: list[float]) -> dict:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread_pct": (max(values) - min(values)) / med * 100 if med else 0.0,
        "values": values,
    }


def case_summary(runs: list[dict]) -> dict:
    return {
        "rps": spread([r["rps"] for r in runs]),
        "p50_ms": spread([r["latency_ms"]["p50"] for r in runs]),
        "p99_ms": spread([r["latency_ms"]["p99"] for r in runs]),
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in runs),
        "loadavg_1m": spread([r.get("loadavg_1m", 0.0) for r in runs]),
        "cpu_us_per_request": {
            k: spread([r["cpu_us_per_request"][k] for r in runs])
            for k in runs[0].get("cpu_us_per_request", {})
        },
        # the event-stream clients beside the activation case (svc_activate_100_streams)
        "stream_requests": sum(r["streams"]["requests"] for r in runs if "streams" in r),
        "stream_failures": sum(r["streams"]["failed"] for r in runs if "streams" in r),
    }


def ratio(summary: dict, num: str, den: str) -> dict:
    a, b = summary[num]["rps"], summary[den]["rps"]
    per_round = [x / y for x, y in zip(a["values"], b["values"], strict=True) if y]
    return {
        "value": a["median"] / b["median"] if b["median"] else 0.0,
        "per_round": per_round,
        "per_round_min": min(per_round),
        "per_round_max": max(per_round),
    }


# --- phases --------------------------------------------------------------------


# fixed-rate follow-ups: (peak case it follows, name, activate?)
FOLLOW_UPS = {
    "svc_activate_100": ("activate_100_at_half_peak", True),
    "svc_list_1m": ("list_1m_at_half_peak", False),
}


def _log_wrk(rnd: int, args, name: str, res: dict) -> None:
    errors = res["non_2xx"] + res["socket_errors"]
    log(
        f"round {rnd + 1}/{args.rounds} {name:26s} {res['rps']:8.0f} req/s  "
        f"p50 {res['latency_ms']['p50']:7.2f} ms  p99 {res['latency_ms']['p99']:7.2f} ms"
        f"  load {res['loadavg_1m']:.1f}" + (f"  errors {errors}" if errors else "")
    )


HISTORY = {"token": ""}  # the token with HISTORY_ROWS usages (large database)


def add_history(dbname: str, rows: int) -> str:
    """`rows` ended usages on one token of `dbname`, written with SQL (triggers off: no events, the
    counter set once); returns that token's id."""
    import psycopg

    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    with psycopg.connect(url, autocommit=True) as conn:
        token = conn.execute("SELECT id FROM tokens ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO token_usages (token_id, user_id, started_at, ended_at, end_reason, lease_id)"
            " SELECT %s, gen_random_uuid(), now() - g * interval '1 s', now() - g * interval '1 s'"
            " + interval '0.5 s', 'released', gen_random_uuid() FROM generate_series(1, %s) g",
            (token, rows),
        )
        conn.execute("UPDATE tokens SET usage_count = usage_count + %s WHERE id = %s", (rows, token))
        conn.execute("VACUUM ANALYZE token_usages")
    return str(token)


def start_streams(
    base: str, seconds: float, clients: int = STREAM_CLIENTS, *, held: bool = True
) -> subprocess.Popen:
    """`clients` event-stream clients in the background for `seconds` (bench/stream_clients.py):
    held ones, or (`held` False: plain sync workers' short answers) reconnecting ones."""
    argv = [sys.executable, str(BENCH / "stream_clients.py")] + ([] if held else ["--reconnect"])
    argv += [base + "/api/events/stream", str(clients), str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_streams(proc: subprocess.Popen) -> dict:
    """The stream clients' requests and failures, once they have ended."""
    out, err = proc.communicate(timeout=120)
    raw = next(
        (line[len("BENCH_JSON ") :] for line in out.splitlines() if line.startswith("BENCH_JSON ")), None
    )
    if proc.returncode != 0 or raw is None:
        raise RuntimeError(f"stream clients failed ({proc.returncode}): {err or out}")
    data = json.loads(raw)
    return {"requests": data["requests"], "failed": data["failed"], "messages": data["messages"]}


def measure(
    args, targets: dict[str, Target], databases: dict[str, str]
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """All rounds. Returns (wrk runs per case, fixed-rate runs per follow-up).

    Each fixed-rate run comes right after the peak run of its route in the same
    round, at `rate_fraction` of that peak, so both see the same neighbours.
    Each activation peak run starts on a vacuumed and analysed `tokens` table:
    the raw app and the service share each database, and one target's dead rows
    (thousands per run, at the low end of the `expires_at` index) must not slow
    down the next target's run. The analysis is what autovacuum would do on a
    normal server (migration 0012: after 2,000 changed rows), and this
    machine's PostgreSQL runs with autovacuum off: without it the statistics
    stay those of the freshly seeded pool (no token held), and the activation's
    own-lease lookup scans every held lease (docs/PERFORMANCE.md). The
    fixed-rate run after it does inherit its own.
    """
    peaks: dict[str, list[dict]] = {name: [] for name, *_ in CASES} | {"svc_list_1m_few_connections": []}
    fixed: dict[str, list[dict]] = {name: [] for name, _ in FOLLOW_UPS.values()}
    log(f"warm-up: {args.warmup}s per case")
    for _name, target, path, script in CASES:
        run_wrk(
            targets[target].base + path.format(history_token=HISTORY["token"]),
            script,
            duration=args.warmup,
            connections=args.connections,
            threads=args.threads,
        )
    for rnd in range(args.rounds):
        order = CASES[rnd % len(CASES) :] + CASES[: rnd % len(CASES)]
        for name, target, path, script in order:
            url = targets[target].base + path.format(history_token=HISTORY["token"])
            if script.startswith("activate"):
                admin_sql("VACUUM ANALYZE tokens", dbname=databases[DATABASE_OF[target]])
            streams = None
            if name == "svc_activate_100_streams":
                streams = start_streams(targets[target].base, args.duration + 2)
                time.sleep(1)  # every client connected once
            cpu_before = targets[target].cpu_seconds()
            res = run_wrk(
                url, script, duration=args.duration, connections=args.connections, threads=args.threads
            )
            cpu = {k: v - cpu_before[k] for k, v in targets[target].cpu_seconds().items()}
            res |= {
                "round": rnd + 1,
                "loadavg_1m": os.getloadavg()[0],
                # gunicorn workers' own CPU per answer: what one core serves, whatever the neighbours do
                "cpu_us_per_request": {k: v * 1e6 / max(1, res["requests"]) for k, v in cpu.items()},
            }
            if streams is not None:
                res["streams"] = finish_streams(streams)
            peaks[name].append(res)
            _log_wrk(rnd, args, name, res)
            time.sleep(args.pause)
            if name in FOLLOW_UPS:
                fname, activate = FOLLOW_UPS[name]
                rate = res["rps"] * args.rate_fraction
                before = host_counters()
                fres = run_fixed_rate(url, rate=rate, duration=args.duration, activate=activate)
                host = counters_during(before)
                fres |= {"round": rnd + 1, "loadavg_1m": os.getloadavg()[0], "host": host}
                fixed[fname].append(fres)
                bad = fres["sent"] - fres["ok"] + fres["dropped"]
                log(
                    f"round {rnd + 1}/{args.rounds} {fname:26s} {rate:6.0f}/s -> "
                    f"{fres['achieved_rate']:6.0f}/s  p50 {fres['latency_ms']['p50'] or 0:7.2f} ms  "
                    f"p99 {fres['latency_ms']['p99'] or 0:7.2f} ms  load {fres['loadavg_1m']:.1f}  "
                    f"steal {host['steal_ms']:.0f} ms  iowait {host['iowait_ms']:.0f} ms  "
                    f"checkpoints {host['checkpoints']:.0f}  tcp retransmits {host['tcp_retransmits']:.0f}"
                    + (f"  failed {bad}" if bad else "")
                )
                time.sleep(args.pause)
            if name == "svc_list_1m":  # closed-loop reference for 3b: wrk with few connections
                wres = run_wrk(
                    url, script, duration=args.duration, connections=args.list_connections, threads=1
                )
                wres |= {"round": rnd + 1, "loadavg_1m": os.getloadavg()[0]}
                peaks["svc_list_1m_few_connections"].append(wres)
                _log_wrk(rnd, args, f"svc_list_1m wrk -c{args.list_connections}", wres)
                time.sleep(args.pause)
    return peaks, fixed


def summarise_fixed(fixed: dict[str, list[dict]]) -> dict:
    return {
        name: {
            "rate": spread([r["target_rate"] for r in runs]),
            "achieved_rate": spread([r["achieved_rate"] for r in runs]),
            "p50_ms": spread([r["latency_ms"]["p50"] or 0.0 for r in runs]),
            "p99_ms": spread([r["latency_ms"]["p99"] or float("inf") for r in runs]),
            "failed": sum(r["sent"] - r["ok"] + r["dropped"] for r in runs),
            "loadavg_1m": spread([r["loadavg_1m"] for r in runs]),
            "runs": runs,
        }
        for name, runs in fixed.items()
    }


def profile(args, targets: dict[str, Target], stamp: str) -> dict | None:
    """Optional: py-spy of svc-100 (master + both workers) under wrk activation load.

    Two samplings of `seconds` each: --gil (CPU: what limits throughput on 2 cores)
    and wall clock (CPU + waits on PostgreSQL and Redis), plus a wall-clock flame graph.
    """
    pyspy = args.py_spy
    if not pyspy:
        return None
    target = targets["svc-100"]
    seconds = max(5, round(args.duration))
    files = {
        "cpu": BENCH / "results" / f"{stamp}-activate-cpu.folded",
        "wall": BENCH / "results" / f"{stamp}-activate-wall.folded",
        "svg": BENCH / "results" / f"{stamp}-activate-wall.svg",
    }
    log(f"py-spy: recording svc-100 activation, 3 x {seconds}s (cpu, wall, flame graph)")
    wrk = subprocess.Popen(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{3 * seconds + 10}s", "-s",
         str(BENCH / "activate.lua"), target.base + "/api/tokens/activate"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    common = ["--pid", str(target.proc.pid), "--subprocesses", "--duration", str(seconds), "--rate", "250"]
    for extra, fmt, key in ((["--gil"], "raw", "cpu"), ([], "raw", "wall"), ([], "flamegraph", "svg")):
        subprocess.run(
            [pyspy, "record", *common, *extra, "--format", fmt, "-o", str(files[key])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    wrk.terminate()
    wrk.wait()
    if not files["cpu"].exists():
        log("py-spy produced nothing (ptrace not permitted?)")
        return None
    return {
        "files": {k: str(v.relative_to(ROOT)) for k, v in files.items() if v.exists()},
        "cpu": summarise_profile(files["cpu"]),
        "wall": summarise_profile(files["wall"]) if files["wall"].exists() else None,
    }


FRAME_RE = re.compile(r"^(.*) \(([^()]*?)(?::(\d+))?\)$")
FLASK_PHASES = ("Flask.preprocess_request", "Flask.process_response", "Flask.do_teardown_request")


def _function(frame: str) -> str:
    m = FRAME_RE.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def _package(frame: str) -> str:
    m = FRAME_RE.match(frame)
    path = m.group(2) if m else frame
    if path.startswith("service/"):
        return "/".join(path.split("/")[:2])
    return path.split("/")[0].removesuffix(".py")


def summarise_profile(folded: Path, top: int = 25) -> dict:
    """Shares of the samples spent inside requests (under Flask.wsgi_app), from py-spy folded stacks.

    self_by_package: leaf frames grouped by library; hooks: what each before/after-request
    hook costs; inclusive: per function (line numbers dropped), callers included.
    """
    total = 0
    by_package: dict[str, int] = {}
    hooks: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not any(f.startswith("Flask.wsgi_app ") for f in frames):
            continue  # idle accept loop, sweeper thread, master
        n = int(count)
        total += n
        leaf = frames[-1]
        by_package[_package(leaf)] = by_package.get(_package(leaf), 0) + n
        own[leaf] = own.get(leaf, 0) + n
        for i, frame in enumerate(frames[:-1]):
            if frame.startswith(FLASK_PHASES):
                hook = f"{frame.split(' ')[0]} -> {_function(frames[i + 1])}"
                hooks[hook] = hooks.get(hook, 0) + n
        for func in {_function(f) for f in frames}:
            inclusive[func] = inclusive.get(func, 0) + n

    def rank(table: dict[str, int], limit: int = top) -> list[dict]:
        ordered = sorted(table.items(), key=lambda kv: -kv[1])[:limit]
        return [{"frame": k, "pct": round(c / total * 100, 1)} for k, c in ordered] if total else []

    return {
        "samples_in_requests": total,
        "self_by_package": rank(by_package),
        "self": rank(own),
        "hooks": rank(hooks, 15),
        "inclusive": rank(inclusive, 60),
    }


# --- what PostgreSQL and Redis take by themselves ----------------------------------

# the service's activation, as its one SQL call (a new user each time: every call takes a token)
ACTIVATE_SQL = (
    "SELECT token_id FROM tokenpool_activate(gen_random_uuid(), NULL, make_interval(secs => 120));\n"
)
TPS_RE = re.compile(r"^tps = ([\d.]+)", re.M)
LATENCY_RE = re.compile(r"^latency average = ([\d.]+) ms", re.M)


def database_dsn(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def run_pgbench(dsn: str, *script: str, seconds: float, clients: int) -> dict:
    argv = [
        "pgbench",
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        "2",
        "-T",
        str(max(1, round(seconds))),
    ]
    proc = subprocess.run([*argv, *script, dsn], capture_output=True, text=True, timeout=seconds + 120)
    tps, latency = TPS_RE.search(proc.stdout), LATENCY_RE.search(proc.stdout)
    if proc.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return {
        "command": " ".join([*argv, *script, "<database>"]),
        "tps": float(tps.group(1)),
        "latency_ms": float(latency.group(1)) if latency else None,
    }


def run_redis_benchmark(*command: str, requests: int, clients: int) -> list[dict]:
    """redis-benchmark on BENCH_REDIS_URL's server and database (flushed afterwards): one row per test."""
    import redis

    where = redis.connection.parse_url(REDIS_URL)
    argv = ["redis-benchmark", "-h", where.get("host", "127.0.0.1"), "-p", str(where.get("port", 6379))]
    argv += [
        "--dbnum",
        str(where.get("db", 0)),
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-r",
        "100000",
        "--csv",
    ]
    proc = subprocess.run([*argv, *command], capture_output=True, text=True, timeout=600)
    rows = list(csv.reader(proc.stdout.splitlines()[1:]))  # a custom command's name may hold commas
    if proc.returncode != 0 or not rows:
        raise RuntimeError(f"redis-benchmark failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    shown = " ".join(argv + [c if len(c) < 40 else "<script>" for c in command])
    return [{"command": shown, "test": r[0], "rps": float(r[1]), "p50_ms": float(r[4]), "p99_ms": float(r[6])}
            for r in rows]  # fmt: skip


def capacity(args, databases: dict[str, str], tag: str) -> dict:
    """pgbench and redis-benchmark figures: what the database and Redis here take by themselves."""
    from service.ratelimit import LeasedFixedWindow

    seconds, clients = args.capacity_seconds, args.pgbench_clients
    pgbench_db = f"{tag}_pgbench"
    databases["pgbench"] = pgbench_db
    admin_sql(f'CREATE DATABASE "{pgbench_db}"')
    log(f"pgbench: initialising scale {args.pgbench_scale} in {pgbench_db}")
    subprocess.run(["pgbench", "-i", "-q", "-s", str(args.pgbench_scale), database_dsn(pgbench_db)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    script = Path(tempfile.mkstemp(prefix="tokenpool-activate-", suffix=".sql")[1])
    script.write_text(ACTIVATE_SQL)
    pg = {}
    try:
        for name, db, extra in (
            ("activate_100", databases["small"], ["-f", str(script)]),
            ("activate_1m", databases["large"], ["-f", str(script)]),
            ("tpcb_like", pgbench_db, ["-b", "tpcb-like"]),
            ("select_only", pgbench_db, ["-b", "select-only"]),
        ):
            admin_sql("VACUUM ANALYZE", dbname=db)
            pg[name] = run_pgbench(database_dsn(db), *extra, seconds=seconds, clients=clients)
            log(f"pgbench {name:14s} {pg[name]['tps']:9.0f} tps  latency {pg[name]['latency_ms']} ms")
    finally:
        script.unlink(missing_ok=True)
    flush_redis()
    hit = LeasedFixedWindow.SCRIPT  # one request's limit check with RATE_LIMIT_LEASE=1: count 1, limit 10^9
    hit_args = [
        "1",
        "bench:rl:__rand_int__",
        "60",
        "1",
        "1000000000",
        "1",
        str(LeasedFixedWindow.LEASE_SHARE),
    ]
    rd = {}
    for row in run_redis_benchmark("-t", "ping,incr", requests=args.redis_requests, clients=clients) + [
        {**r, "test": "limiter_hit_eval"}
        for r in run_redis_benchmark("EVAL", hit, *hit_args, requests=args.redis_requests, clients=clients)
    ]:
        rd[row["test"]] = row
        log(
            f"redis-benchmark {row['test']:16s} {row['rps']:9.0f} req/s"
            f"  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
        )
    flush_redis()
    return {"pgbench": pg, "pgbench_clients": clients, "pgbench_scale": args.pgbench_scale, "redis": rd}


def print_capacity(cap: dict) -> None:
    print(f"PostgreSQL by itself: pgbench -M prepared -c {cap['pgbench_clients']} -j 2, one run each")
    for name, r in cap["pgbench"].items():
        print(f"  {name:18s} {r['tps']:9.0f} tps  latency avg {r['latency_ms']} ms")
    print("Redis by itself: redis-benchmark --csv -r 100000")
    for name, r in cap["redis"].items():
        print(f"  {name:18s} {r['rps']:9.0f} req/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms")
    print()


# --- report --------------------------------------------------------------------


def evaluate(peaks: dict, fixed: dict) -> list[dict]:
    ratios = {
        "1": ratio(peaks, "svc_activate_100", "raw_activate"),
        "2": ratio(peaks, "svc_index", "hello"),
        "3a": ratio(peaks, "svc_activate_1m", "svc_activate_100"),
        "5": ratio(peaks, "svc_activate_100_pgbouncer", "svc_activate_100"),
        "6": ratio(peaks, "svc_activate_100_streams", "svc_activate_100"),
        "7": ratio(peaks, "svc_get_token_history", "svc_summary"),
        "8": ratio(peaks, "svc_activate_100", "svc_activate_100_sync"),
        "9": ratio(peaks, "svc_activate_pools", "svc_activate_100"),
    }
    errors = {
        "1": peaks["svc_activate_100"]["errors"] + peaks["raw_activate"]["errors"],
        "2": peaks["svc_index"]["errors"] + peaks["hello"]["errors"],
        "3a": peaks["svc_activate_1m"]["errors"] + peaks["svc_activate_100"]["errors"],
        "3b": fixed["list_1m_at_half_peak"]["failed"],
        "4": fixed["activate_100_at_half_peak"]["failed"],
        "5": peaks["svc_activate_100_pgbouncer"]["errors"] + peaks["svc_activate_100"]["errors"],
        "6": peaks["svc_activate_100_streams"]["errors"]
        + peaks["svc_activate_100_streams"]["stream_failures"],
        "7": peaks["svc_get_token_history"]["errors"] + peaks["svc_summary"]["errors"],
        "8": peaks["svc_activate_100"]["errors"] + peaks["svc_activate_100_sync"]["errors"],
        "9": peaks["svc_activate_pools"]["errors"] + peaks["svc_activate_100"]["errors"],
    }
    rows = []
    for tid, what, threshold, kind in TARGETS_SPEC:
        if kind == "ratio>=":
            r = ratios[tid]
            value, detail = r["value"], f"rounds {r['per_round_min']:.2f}-{r['per_round_max']:.2f}"
            ok = value >= threshold
        else:
            key = "list_1m_at_half_peak" if tid == "3b" else "activate_100_at_half_peak"
            p99 = fixed[key]["p99_ms"]
            value = p99["median"]
            rate = fixed[key]["rate"]
            detail = f"rounds {p99['min']:.1f}-{p99['max']:.1f} ms at {rate['min']:.0f}-{rate['max']:.0f}/s"
            ok = value <= threshold
        if errors[tid]:
            detail += f", {errors[tid]} failed requests"
            ok = False
        rows.append(
            {
                "id": tid,
                "what": what,
                "kind": kind,
                "threshold": threshold,
                "value": value,
                "detail": detail,
                "pass": ok,
            }
        )
    return rows


def pgbouncer_per_core(peaks: dict) -> dict:
    """Activations per core through PgBouncer / direct, from the median CPU time per activation.

    Steadier than the rates on a shared machine: what target 5 is where cores are the limit.
    """
    direct = peaks["svc_activate_100"]["cpu_us_per_request"]["service"]["median"]
    pooled = peaks["svc_activate_100_pgbouncer"]["cpu_us_per_request"]
    workers, bouncer = pooled["service"]["median"], pooled["pgbouncer"]["median"]
    return {"workers": direct / workers, "with_pgbouncer": direct / (workers + bouncer)}


def print_report(peaks: dict, fixed: dict, rows: list[dict], args) -> None:
    print()
    print(
        f"Peak rates: wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds x {args.duration:g}s"
        " (median, min-max, spread)"
    )
    print(
        f"  {'case':26s} {'req/s':>8s} {'min':>8s} {'max':>8s} {'spread':>7s} {'p50 ms':>8s} {'p99 ms':>8s}"
        "  CPU us/request (gunicorn master + workers; PgBouncer)"
    )
    for name, *_ in CASES:
        s = peaks[name]
        rps = s["rps"]
        cpu = "; ".join(f"{v['median']:.0f}" for v in s["cpu_us_per_request"].values())
        print(
            f"  {name:26s} {rps['median']:8.0f} {rps['min']:8.0f} {rps['max']:8.0f} {rps['spread_pct']:6.1f}%"
            f" {s['p50_ms']['median']:8.2f} {s['p99_ms']['median']:8.2f}  {cpu}"
            + (f"  ({s['errors']} errors)" if s["errors"] else "")
        )
    print()
    w = peaks["svc_list_1m_few_connections"]
    label = f"svc_list_1m -c{args.list_connections}"
    print(
        f"  {label:26s} {w['rps']['median']:8.0f} {w['rps']['min']:8.0f}"
        f" {w['rps']['max']:8.0f} {w['rps']['spread_pct']:6.1f}% {w['p50_ms']['median']:8.2f}"
        f" {w['p99_ms']['median']:8.2f}  (reference for 3b: wrk with few connections)"
    )
    print()
    print(
        f"Fixed rate: {args.rate_fraction:g} x the peak measured just before in the same round; open loop,"
        " latency from the scheduled send time"
    )
    print(f"  {'case':26s} {'rate/s':>7s} {'achieved':>8s} {'p50 ms':>8s} {'p99 ms':>8s}  p99 rounds")
    for name in ("activate_100_at_half_peak", "list_1m_at_half_peak"):
        f = fixed[name]
        print(
            f"  {name:26s} {f['rate']['median']:7.0f} {f['achieved_rate']['median']:8.0f}"
            f" {f['p50_ms']['median']:8.2f} {f['p99_ms']['median']:8.2f}"
            f"  {f['p99_ms']['min']:.1f}-{f['p99_ms']['max']:.1f}"
            + (f"  failed {f['failed']}" if f["failed"] else "")
        )
    load = statistics.median(r for s in peaks.values() for r in s["loadavg_1m"]["values"])
    cores = os.cpu_count() or 1
    print(f"  median 1-minute load average during the runs: {load:.1f} on {cores} cores")
    if load > cores:
        print("  WARNING: the machine was busy with other work; treat these numbers as noisy")
    print()
    info = ratio(peaks, "raw_activate_1m", "raw_activate")
    print(
        f"Database share of 3a: raw app 1,000,000 / 100 tokens = {info['value']:.2f}"
        f" (rounds {info['per_round_min']:.2f}-{info['per_round_max']:.2f})"
    )
    per_core = pgbouncer_per_core(peaks)
    print(
        "Target 5 per core (activations per CPU second, through PgBouncer / direct): API workers"
        f" {per_core['workers']:.2f}; workers and PgBouncer on the same cores"
        f" {per_core['with_pgbouncer']:.2f}"
    )
    print()
    print("Targets (docs/PERFORMANCE.md)")
    print(f"  {'#':3s} {'target':62s} {'goal':>8s} {'measured':>9s}  result")
    for r in rows:
        goal = f">= {r['threshold']:.2f}" if r["kind"] == "ratio>=" else f"<= {r['threshold']:.0f} ms"
        value = f"{r['value']:.2f}" if r["kind"] == "ratio>=" else f"{r['value']:.1f} ms"
        print(
            f"  {r['id']:3s} {r['what']:62s} {goal:>8s} {value:>9s}  {'PASS' if r['pass'] else 'FAIL'}"
            f"  ({r['detail']})"
        )
    print()


def print_profile(prof: dict) -> None:
    for kind in ("cpu", "wall"):
        p = prof.get(kind)
        if not p:
            continue
        print(f"py-spy {kind} ({p['samples_in_requests']} samples in requests; {prof['files'].get(kind)})")
        print(
            "  self time by package: "
            + ", ".join(f"{i['frame']} {i['pct']}%" for i in p["self_by_package"][:8])
        )
        print("  request hooks:")
        for item in p["hooks"][:6]:
            print(f"    {item['pct']:5.1f}%  {item['frame']}")
        print("  inclusive, service and extensions:")
        shown = 0
        for item in p["inclusive"]:
            if (
                item["frame"]
                .split("(")[-1]
                .startswith(("service/", "flask_", "limits/", "prometheus", "logging"))
            ):
                print(f"    {item['pct']:5.1f}%  {item['frame']}")
                shown += 1
            if shown == 12:
                break
    print()


def machine() -> dict:
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "nproc": sh("nproc"),
        "cpu": sh("lscpu | grep 'Model name' | sed 's/.*: *//'"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": sh(f"psql '{PG_ADMIN_URL}' -Atc 'show server_version'"),
        "redis": sh("redis-cli -u " + REDIS_URL + " info server | grep redis_version | cut -d: -f2"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        "loadavg_at_start": os.getloadavg(),
        "note": "2 cores shared by wrk, the 4 targets, PostgreSQL, Redis and other people's test runs",
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="tokenpool benchmark (the targets of docs/PERFORMANCE.md)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every case (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per case per round (default 10)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections for peak rates (16)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1: wrk shares the 2 cores)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per case, discarded")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument("--rate-fraction", type=float, default=0.5, help="fixed-rate load as a fraction of peak")
    p.add_argument("--list-connections", type=int, default=4, help="wrk connections for the list reference")
    p.add_argument("--small-size", type=int, default=100, help="small pool size (100)")
    p.add_argument("--large-size", type=int, default=1_000_000, help="large pool size (1,000,000)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers of every target (2)")
    p.add_argument("--gunicorn-threads", type=int, default=1, help="threads per worker (>1: gthread)")
    p.add_argument("--gevent", action="store_true", help="gevent workers (pip install gevent first)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 3 s, 1 s warm-up")
    p.add_argument("--py-spy", metavar="PATH", help="py-spy binary: also profile service activation")
    p.add_argument("--capacity-seconds", type=float, default=10.0, help="seconds per pgbench run (10)")
    p.add_argument("--pgbench-clients", type=int, default=8, help="pgbench and redis-benchmark clients (8)")
    p.add_argument("--pgbench-scale", type=int, default=8, help="pgbench -i scale for its own scripts (8)")
    p.add_argument("--redis-requests", type=int, default=100_000, help="redis-benchmark requests per test")
    p.add_argument("--no-capacity", action="store_true", help="skip the pgbench and redis-benchmark phase")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep databases, logs and temp dir")
    p.add_argument("--output", help="results JSON path (default bench/results/<timestamp>.json)")
    args = p.parse_args(argv)
    global WORKERS, THREADS, GEVENT  # every target runs with the same gunicorn settings
    WORKERS, THREADS, GEVENT = args.workers, args.gunicorn_threads, args.gevent
    if args.quick:
        args.rounds, args.duration, args.warmup, args.pause = 1, 3.0, 1.0, 0.5
        args.capacity_seconds, args.redis_requests, args.pgbench_scale = 3.0, 20_000, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="tokenpool-bench-"))
    tag = f"tokenpool_bench_{os.getpid()}"
    dbs = {"small": f"{tag}_small", "large": f"{tag}_large"}
    targets: dict[str, Target] = {}
    bouncer: ThrowawayPgBouncer | None = None
    started = time.monotonic()
    info = machine()
    try:
        log(
            f"work dir {workdir}; databases {dbs['small']} ({args.small_size} tokens), "
            f"{dbs['large']} ({args.large_size} tokens)"
        )
        small_url = prepare_database(dbs["small"], args.small_size, workdir, pools=True)
        large_url = prepare_database(dbs["large"], args.large_size, workdir)
        HISTORY["token"] = add_history(dbs["large"], HISTORY_ROWS)
        log(f"history: {HISTORY_ROWS:,} usages on token {HISTORY['token']}")
        flush_redis()
        bouncer = ThrowawayPgBouncer(make_url(PG_ADMIN_URL).port or 5432, pool_size=PGBOUNCER_POOL).start()
        targets = start_targets(args, workdir, small_url, large_url, bouncer)
        wait_all(targets)
        log("targets up: " + ", ".join(f"{t.name}={t.port}" for t in targets.values()))
        raw_peaks, raw_fixed = measure(args, targets, dbs)
        peaks = {name: case_summary(runs) for name, runs in raw_peaks.items()}
        fixed = summarise_fixed(raw_fixed)
        rows = evaluate(peaks, fixed)
        cap = None if args.no_capacity else capacity(args, dbs, tag)
        prof = profile(args, targets, stamp)
        print_report(peaks, fixed, rows, args)
        if cap:
            print_capacity(cap)
        if prof:
            print_profile(prof)
        result = {
            "date": stamp,
            "args": vars(args),
            "machine": info,
            "targets": rows,
            "informational": {
                "raw_1m_over_raw_100": ratio(peaks, "raw_activate_1m", "raw_activate"),
                "pgbouncer_over_direct_per_core": pgbouncer_per_core(peaks),
            },
            "peaks": peaks,
            "peak_runs": raw_peaks,
            "fixed_rate": fixed,  # includes every run
            "capacity": cap,
            "pgbouncer": {"pool_mode": "transaction", "default_pool_size": PGBOUNCER_POOL},
            "profile": prof,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        output = Path(args.output) if args.output else BENCH / "results" / f"{stamp}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, default=str))
        log(f"results written to {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
        return 1 if args.strict and not all(r["pass"] for r in rows) else 0
    finally:
        for t in targets.values():
            t.stop()
        if bouncer:
            bouncer.stop()
        if not args.keep:
            for name in dbs.values():
                with contextlib.suppress(Exception):
                    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            with contextlib.suppress(Exception):
                flush_redis()
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir} and databases {', '.join(dbs.values())}")


if __name__ == "__main__":
    sys.exit(main())
