"""The schema revision the docs show is the migrations' head, so the examples never go stale."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import head_revision

ROOT = Path(__file__).resolve().parent.parent
REVISION_IN_EXAMPLE = re.compile(r'"(?:schema_revision|migration_revision|head_revision)":\s*"([^"]+)"')


def test_docs_show_the_migrations_head():
    head = head_revision()
    shown = {
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}": m.group(1)
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for text in [path.read_text()]
        for m in REVISION_IN_EXAMPLE.finditer(text)
    }
    assert shown, "no revision example found: the pattern no longer matches the docs"
    stale = {where: revision for where, revision in shown.items() if revision != head}
    assert not stale, f"docs show revisions other than the head {head!r}: {stale}"
