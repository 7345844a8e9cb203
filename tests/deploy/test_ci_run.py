"""`.ci/run`: installs what the suite needs without starting or stopping services, lists it in the README."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CI = ROOT / ".ci" / "run"
SCRIPT = CI.read_text()


def test_ci_run_is_valid_bash():
    subprocess.run(["bash", "-n", str(CI)], check=True)


def test_ci_run_stops_nothing():
    """No process is stopped by name or otherwise: installing must not need it."""
    assert not re.search(r"\b(pkill|killall|kill)\b", SCRIPT)
    assert not re.search(r"\b(systemctl|service)\s+\S*\s*(stop|restart)", SCRIPT)


def test_services_are_kept_from_starting_while_packages_install():
    install = SCRIPT.index("apt-get install")
    policy = SCRIPT.index("exit 101\\n' \\\n")  # the policy file is written ...
    removal = SCRIPT.index("\n  remove_policy\n", install)  # ... and removed after the install
    assert policy < install < removal
    assert '[ "$created_policy" -eq 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' in SCRIPT  # only if ours


def test_a_machine_without_the_tools_gets_each_package(tmp_path):
    """With only the shell's basics on PATH, the dry run names every package the suite needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "ls", "sort", "tail", "sed", "seq", "sleep", "env", "cat", "dirname"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    out = subprocess.run(
        ["bash", str(CI)],
        env={"PATH": str(bin_dir), "CI_DRY_RUN": "1", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    planned = set(out.split("would install:", 1)[1].split())
    expected = {"python3", "make", "git", "curl", "procps", "prometheus", "wrk", "openssl", "gettext-base"}
    assert expected | {"redis-server", "postgresql"} <= planned  # nginx, pgbouncer: found in /usr/sbin


def test_the_readme_lists_every_tool_ci_checks_for():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### What the test suite needs", 1)[1]
    tools = set(re.findall(r"\b(?:have|pg_tool) ([a-z][a-z0-9_-]+)", SCRIPT))
    assert tools >= {"nginx", "promtool", "wrk", "openssl", "envsubst", "redis-server", "initdb", "pg_ctl"}
    missing = sorted(t for t in tools if f"`{t}`" not in section)
    assert not missing, f"README's 'What the test suite needs' does not name {missing}"
