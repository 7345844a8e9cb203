"""docs/API.md's error-code table lists exactly the (HTTP status, error_code) pairs the service answers."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import service
from service.errors import HTTP_ERROR_CODES, ApiError

ROOT = Path(__file__).resolve().parent.parent
TABLE_ROW = re.compile(r"^\| (\d{3}) \| `([A-Z_]+)` \|", re.MULTILINE)


def documented() -> set[tuple[int, str]]:
    text = (ROOT / "docs" / "API.md").read_text()
    section = text.split("## 4. Errors", 1)[1].split("\n## ", 1)[0]
    return {(int(code), name) for code, name in TABLE_ROW.findall(section)}


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _literal_error_responses() -> set[tuple[int, str]]:
    """`error_response(503, "SERVICE_UNAVAILABLE", ...)` calls written with literals anywhere in service/."""
    found = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "error_response"
                and len(node.args) >= 2
                and all(isinstance(a, ast.Constant) for a in node.args[:2])
            ):
                found.add((node.args[0].value, node.args[1].value))
    return found


def answered() -> set[tuple[int, str]]:
    for module in pkgutil.walk_packages(service.__path__, "service."):
        importlib.import_module(module.name)
    classes = {(cls.code, cls.error_code) for cls in _subclasses(ApiError)}
    return set(HTTP_ERROR_CODES.items()) | classes | _literal_error_responses()


def test_the_error_table_equals_the_codes_the_service_answers():
    doc, code = documented(), answered()
    assert len(doc) > 10, "the table's rows no longer match the pattern"
    assert doc - code == set(), "documented but never answered"
    assert code - doc == set(), "answered but not in docs/API.md's table"
