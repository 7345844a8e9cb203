"""Dockerfile, .dockerignore and docker/entrypoint.sh.

There is no Docker engine where these tests run, so the Dockerfile is parsed
(not built) and the entrypoint script is run directly with a stub gunicorn.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
GUNICORN_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuations joined."""
    result, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _final(keyword: str) -> str:
    values = [args for kw, args in _stages()[-1] if kw == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


def _exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form: {args}"
    return json.loads(args)


def test_multi_stage_on_python_311_slim():
    args = dict(
        (m.group(1), m.group(2))
        for kw, a in _instructions()
        if kw == "ARG"
        for m in [re.match(r"(\w+)=(\S+)", a)]
        if m
    )
    froms = [a for kw, a in _instructions() if kw == "FROM"]
    assert len(froms) >= 2
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), f.split()[0]) for f in froms]
    assert all(image == "python:3.11-slim" for image in images), images
    build_stage = froms[0].split()
    assert build_stage[1].upper() == "AS"
    copies_from_build = [
        a for kw, a in _stages()[-1] if kw == "COPY" and a.startswith(f"--from={build_stage[2]}")
    ]
    assert copies_from_build, "the runtime stage copies the built dependencies"


def test_dependencies_layer_comes_before_the_code():
    build = _stages()[0]
    copies = [a for kw, a in build if kw == "COPY"]
    assert copies and all("requirements.txt" in c for c in copies), "only requirements in the deps stage"
    runs = " ".join(a for kw, a in build if kw == "RUN")
    assert "pip install -r" in runs


def test_runs_as_a_non_root_user():
    user = _final("USER").split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "numeric UID so Kubernetes runAsNonRoot can verify it"


def test_healthcheck_uses_urllib_on_healthz():
    healthcheck = _final("HEALTHCHECK")
    assert "CMD" in healthcheck
    assert "urllib" in healthcheck
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    command = _exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")


def test_entrypoint_script_then_gunicorn_command():
    entrypoint = _exec_form(_final("ENTRYPOINT"))
    assert len(entrypoint) == 1
    copied = [a for kw, a in _stages()[-1] if kw == "COPY" and "docker/entrypoint.sh" in a]
    assert copied and shlex.split(copied[0])[-1] == entrypoint[0]
    assert _exec_form(_final("CMD")) == GUNICORN_CMD
    env = " ".join(a for kw, a in _stages()[-1] if kw == "ENV")
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus" in env
    assert "8000" in _final("EXPOSE")


def test_copied_sources_exist():
    for keyword, args in _instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} missing"


def test_dockerignore_keeps_secrets_and_junk_out_but_not_the_sources():
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "tests"} <= patterns
    for needed in ("requirements.txt", "wsgi.py", "gunicorn.conf.py", "service", "migrations", "docker"):
        assert needed not in patterns and needed + "/" not in patterns


def test_entrypoint_is_executable_posix_sh():
    mode = ENTRYPOINT.stat().st_mode
    assert mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


def _fake_gunicorn(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gunicorn"
    fake.write_text(
        '#!/bin/sh\necho "args:$*"\necho "dir:$PROMETHEUS_MULTIPROC_DIR"\nls -A "$PROMETHEUS_MULTIPROC_DIR"\n'
    )
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_entrypoint_wipes_metrics_dir_then_execs_gunicorn(tmp_path):
    env = _fake_gunicorn(tmp_path)
    metrics = tmp_path / "prom"
    (metrics / "sub").mkdir(parents=True)
    (metrics / "counter_123.db").write_text("stale")
    (metrics / ".hidden").write_text("stale")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    out = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "args:" + " ".join(GUNICORN_CMD[1:])
    assert lines[1] == f"dir:{metrics}"
    assert lines[2:] == [], "the multiprocess directory must be empty when gunicorn starts"
    assert metrics.is_dir()


def test_entrypoint_creates_missing_metrics_dir(tmp_path):
    env = _fake_gunicorn(tmp_path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "missing" / "prom")
    subprocess.run(
        [str(ENTRYPOINT), "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        env=env,
        capture_output=True,
        check=True,
    )
    assert (tmp_path / "missing" / "prom").is_dir()


def test_entrypoint_runs_other_commands_without_wiping(tmp_path):
    metrics = tmp_path / "prom"
    metrics.mkdir()
    (metrics / "gauge_live_7.db").write_text("in use")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    out = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", 'echo "$PROMETHEUS_MULTIPROC_DIR"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(metrics)
    assert (metrics / "gauge_live_7.db").exists()
