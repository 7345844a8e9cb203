"""The in-process benchmarks still run against today's app (they call its hooks and routes
directly, so a change of the request pipeline can break them without any other test noticing).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.procs import ROOT


@pytest.mark.parametrize(
    "args",
    [
        ["bench/library_overrides.py", "--calls", "20"],
        ["bench/inprocess.py", "api", "--requests", "50"],
    ],
    ids=["library_overrides", "inprocess"],
)
def test_an_in_process_benchmark_runs_to_its_report(tmp_path, args):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/bench.sqlite3"}
    env.pop("REDIS_URL", None)
    command = [sys.executable, *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
