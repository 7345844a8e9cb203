"""The README's commands run as written, in a fresh copy of the repository.

A newcomer's first hour: `make run` (with and without `cp .env.example .env`)
and the curls of "Try it"; then the production block (flask db upgrade, seed,
an admin key, gunicorn) against a new database on the test PostgreSQL and a
throwaway Redis. Each block is read from README.md and run by bash with
`set -e`; the only inputs are environment variables the blocks name (`PORT`,
`DATABASE_URL`, `REDIS_URL`, `PROMETHEUS_MULTIPROC_DIR`, `BIND`). Servers are
stopped through the process group of the bash that started them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import temporary_database
from tests.procs import ThrowawayRedis, free_port, wait_for
from tests.web import http_get

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
pytestmark = [pytest.mark.e2e]


def shell_blocks(markdown: str) -> list[str]:
    """The ```sh blocks of a Markdown text, in order."""
    return re.findall(r"^```sh\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


README_BLOCKS = shell_blocks((ROOT / "README.md").read_text())


def block_with(command: str) -> str:
    """The README's shell block that contains `command`."""
    found = [b for b in README_BLOCKS if command in b]
    assert found, f"README.md has no sh block with {command!r}"
    return found[0]


def fresh_checkout(tmp_path: Path) -> Path:
    """The repository's tracked files copied to a new folder, its venv linked as `.venv`.

    The requirements files are dated before the venv, so `make` sees an
    up-to-date venv instead of reinstalling into the shared one.
    """
    names = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    target = tmp_path / "tokenpool"
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(VENV)
    for name in ("requirements.txt", "requirements-dev.txt"):
        os.utime(target / name, (0, 0))
    return target


def clean_env(**extra: str) -> dict:
    """What a newcomer's shell has: a PATH, a HOME, a locale; nothing of the test run but PGAPPNAME."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    if "PGAPPNAME" in os.environ:  # the run's connection guard counts these connections too
        env["PGAPPNAME"] = os.environ["PGAPPNAME"]
    return env | extra


def start_block(block: str, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """Run a README block with bash (stop at the first failing command) in its own process group."""
    script = cwd / f"block-{log.stem}.sh"
    script.write_text("set -e\n" + block)
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["bash", str(script)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the block's process group (the bash we started and its children), then wait."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serving(url: str, proc: subprocess.Popen, log: Path) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the block stopped (exit {proc.returncode}):\n{log.read_text()}")
        return http_get(url, timeout=1)[0] == 200

    try:
        wait_for(up, 120, 0.2, what=url)
    except TimeoutError:
        raise AssertionError(f"{url} did not answer:\n{log.read_text()}") from None


@pytest.mark.parametrize("dotenv", [False, True], ids=["as-cloned", "with-copied-env-example"])
def test_make_run_and_the_curls_of_try_it(tmp_path, dotenv):
    checkout = fresh_checkout(tmp_path)
    if dotenv:  # what .env.example tells a newcomer to do
        shutil.copy(checkout / ".env.example", checkout / ".env")
    first = block_with("make run")
    make_run = next(line for line in first.splitlines() if line.startswith("make run"))
    port = str(free_port())
    env = clean_env(PORT=port)
    server = start_block(make_run, checkout, env, tmp_path / "make-run.log")
    try:
        serving(f"http://127.0.0.1:{port}/health/ready", server, tmp_path / "make-run.log")
        try_it = ["bash", "-ec", block_with("curl")]
        curls = subprocess.run(try_it, cwd=checkout, env=env, capture_output=True, text=True, timeout=30)
        assert curls.returncode == 0, curls.stderr
        lease, summary, released = [json.loads(part) for part in re.findall(r"\{[^{}]*\}", curls.stdout)]
        assert lease["user_id"] == "6f1c1c1e-2d4b-4b7a-9a53-2f7f0c3b9d10" and lease["token_id"]
        assert (summary["total"], summary["active"]) == (100, 1)
        assert (released["token_id"], released["state"]) == (lease["token_id"], "available")

        # development: a newcomer's loop of curls never meets 429
        statuses = {http_get(f"http://127.0.0.1:{port}/api/tokens/summary")[0] for _ in range(150)}
        assert statuses == {200}
        # and a fresh instance is healthy from the start
        status, body, _ = http_get(f"http://127.0.0.1:{port}/health")
        assert (status, json.loads(body)["status"]) == (200, "healthy"), body
    finally:
        stop(server)
    assert (checkout / "instance" / "tokenpool.sqlite3").exists()


def test_the_production_block(tmp_path):
    checkout = fresh_checkout(tmp_path)
    block = block_with("gunicorn -c gunicorn.conf.py wsgi:app")
    port = free_port()
    multiproc = tmp_path / "prometheus-multiproc"  # does not exist yet, as on a fresh machine
    redis = ThrowawayRedis().start()
    log = tmp_path / "production.log"
    try:
        with temporary_database("tokenpool_readme") as url:
            env = clean_env(
                DATABASE_URL=url.replace("postgresql://", "postgresql+psycopg://", 1),
                REDIS_URL=redis.url,
                PROMETHEUS_MULTIPROC_DIR=str(multiproc),
                BIND=f"127.0.0.1:{port}",
                WEB_CONCURRENCY="2",
                POOL_SIZE="2",
                POOL_MAX_OVERFLOW="1",
            )
            server = start_block(block, checkout, env, log)
            try:
                base = f"http://127.0.0.1:{port}"
                serving(base + "/health/ready", server, log)
                status, body, _ = http_get(base + "/api/tokens/summary")
                assert (status, json.loads(body)["total"]) == (200, 100)
                status, body, _ = http_get(base + "/metrics")
                assert status == 200 and b"flask_http_request_duration_seconds" in body
                output = log.read_text()
                assert re.search(r"\b[A-Za-z0-9_-]{32,}\b", output), output  # the admin key, shown once
                assert "Traceback" not in output, output
            finally:
                stop(server)
    finally:
        redis.stop()
    assert multiproc.is_dir()
