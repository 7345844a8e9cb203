"""`.env.example` lists every variable the service and gunicorn read."""

from __future__ import annotations

import re
from pathlib import Path

from dotenv import dotenv_values

from service.config import ALIASES

ROOT = Path(__file__).resolve().parent.parent


def variables_read() -> set[str]:
    found = set()
    for path in [*ROOT.joinpath("service").rglob("*.py"), ROOT / "gunicorn.conf.py"]:
        text = path.read_text()
        found |= set(re.findall(r'_(?:int|str|bool|float)\("([A-Z][A-Z0-9_]+)"', text))
        found |= set(re.findall(r'os\.environ\.get\("([A-Z][A-Z0-9_]+)"', text))
    return found


def test_every_variable_is_in_env_example():
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = variables_read() - listed
    assert not missing, f"add to .env.example: {sorted(missing)}"
    assert len(variables_read()) > 40


def test_a_copied_env_example_gives_no_comment_as_a_value():
    """Comments on their own lines: `VAR=   # note` would make the note the value in a copied .env."""
    values = dotenv_values(ROOT / ".env.example")
    assert {name: value for name, value in values.items() if value and "#" in value} == {}
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert [line for line in lines if re.match(r"^[A-Z].*\s#", line)] == []


def documented_in_configuration() -> set[str]:
    """The variables named in the first column of docs/CONFIGURATION.md's tables."""
    text = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    found = set()
    for cell in re.findall(r"^\| ([^|]+) \|", text, re.M):
        found |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", cell))
    return found


def test_every_variable_is_in_the_configuration_doc_and_nothing_else():
    documented = documented_in_configuration()
    known = variables_read() | {alias.name for alias in ALIASES}  # the alias table is a table there too
    assert variables_read() - documented == set(), "add to docs/CONFIGURATION.md"
    assert documented - known == set(), "docs/CONFIGURATION.md names a variable nothing reads"


def test_a_blank_metrics_folder_variable_writes_no_sample_files_into_the_working_directory(tmp_path):
    """`.env.example` lists PROMETHEUS_MULTIPROC_DIR blank; prometheus_client alone would take it
    for set and write its files into the working directory."""
    import subprocess
    import sys

    script = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from wsgi import app\n"
        "client = app.test_client()\n"
        "client.get('/api'); client.get('/nowhere')\n"
        "text = client.get('/metrics').get_data(as_text=True)\n"
        'assert \'flask_http_request_total{method="GET",status="200"} 1.0\' in text, text[:500]\n'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "APP_ENV": "development",
        "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.db")) == []
