"""service/clock.py: the one injectable clock, read by tokens, health, monitoring and the sweeper."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask

from service import clock

SERVICE = Path(__file__).resolve().parent.parent / "service"


def test_injected_time_or_none_for_tokens_and_the_process_clock_for_health():
    app = Flask(__name__)
    with app.app_context():
        assert clock.injected() is None and clock.token_time() is None
        before = datetime.now(UTC)
        assert before <= clock.now() <= datetime.now(UTC)
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    app.config["TOKEN_CLOCK"] = lambda: fixed
    assert clock.token_time(app) == fixed and clock.now(app) == fixed
    with app.app_context():
        assert clock.token_time() == fixed and clock.now() == fixed


def test_no_module_imports_another_packages_routes():
    """A view module is imported for its views only, by its own package: the clock lived in
    tokens/routes.py, so health and monitoring imported a view module to read the time."""
    offenders = []
    for path in SERVICE.rglob("*.py"):
        package = ["service", *path.parent.relative_to(SERVICE).parts]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = [*base, *(node.module or "").split(".")] if node.module else base
                targets = [[*module, alias.name] for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name.split(".") for alias in node.names]
            else:
                continue
            for target in targets:
                if "routes" in target and target[: target.index("routes")] != package:
                    offenders.append(f"{path.relative_to(SERVICE)} imports {'.'.join(target)}")
    assert offenders == []


def test_no_module_reads_the_time_from_a_routes_module():
    """The clock lived in tokens/routes.py, so health and monitoring imported a view module for it."""
    offenders = []
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("routes"):
                if any(alias.name == "clock" for alias in node.names):
                    offenders.append(str(path.relative_to(SERVICE)))
        if path.name != "clock.py" and "TOKEN_CLOCK" in path.read_text():
            offenders.append(f"{path.relative_to(SERVICE)} reads TOKEN_CLOCK")
    assert offenders == []
