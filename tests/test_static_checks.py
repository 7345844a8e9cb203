"""The checkable contracts: mypy over service/, ruff's rules (docstrings included) and its format.

So `make test` and `.ci/run` fail on a type error, an undocumented public name
of service/ or a file ruff would reformat. Settings: setup.cfg `[mypy]`, ruff.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_mypy_finds_no_type_error_in_service():
    done = run("mypy")  # the files and settings are setup.cfg's
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", [("check", "."), ("format", "--check", ".")], ids=["check", "format"])
def test_ruff_is_clean(command):
    done = run("ruff", *command)
    assert done.returncode == 0, done.stdout + done.stderr
