"""The repository stands alone: no tracked file points outside it or cites a tracker's issue numbers.

A reader of a fresh clone has only the clone: a link to a file beside the
repository, an absolute path of the machine it was written on, or a citation of an issue
number of a tracker that is not in the repository leads nowhere. Web links (https://)
to public standards and upstream projects are fine.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}

# Each pattern is written so that this file's own source does not match it.
FORBIDDEN = [
    (re.compile(r"\.\./s[h]ared\b"), "a path beside the repository"),
    (re.compile(r"(?<![\w.])/w[o]rk/"), "an absolute path of the machine it was written on"),
    (re.compile(r"\bS[P]EC(?:\.md)?\b"), "the outside specification instead of docs/API.md"),
    (
        re.compile(r"\bi[s]sues?\s*(?:no\.?\s*)?#?\d+\b", re.IGNORECASE),
        "an issue number of an outside tracker",
    ),
    (re.compile(r"\bs[e]ed\s+0\d\d\b", re.IGNORECASE), "a source document outside the repository"),
]
MARKDOWN_LINK = re.compile(
    r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"  # [text](target "title")
    r"|^\s*\[[^\]]+\]:\s*(\S+)",  # [label]: target
    re.MULTILINE,
)
EXTERNAL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def tracked_files() -> list[Path]:
    """The files git tracks (the fresh clone's content); the work tree when git is missing."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            names += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def forbidden_references(text: str) -> list[str]:
    """`line N: <match> (<why>)` for each reference that points outside the repository."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in FORBIDDEN:
            for match in pattern.finditer(line):
                found.append(f"line {number}: {match.group(0)!r} ({why})")
    return found


def broken_links(path: Path, text: str, root: Path = ROOT) -> list[str]:
    """Relative Markdown links of `path` that leave `root` or name a file that does not exist."""
    found = []
    for match in MARKDOWN_LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if target.startswith("#") or EXTERNAL_SCHEME.match(target):
            continue
        local = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (root / local.lstrip("/")) if local.startswith("/") else (path.parent / local)
        resolved = resolved.resolve()
        if root.resolve() not in (resolved, *resolved.parents):
            found.append(f"{target!r} leaves the repository")
        elif not resolved.exists():
            found.append(f"{target!r} does not exist")
    return found


def test_no_tracked_file_points_outside_the_repository():
    problems = []
    for path in tracked_files():
        text = read_text(path)
        if text is None:
            continue
        name = path.relative_to(ROOT)
        problems += [f"{name} {p}" for p in forbidden_references(text)]
        if path.suffix == ".md":
            problems += [f"{name}: link {p}" for p in broken_links(path, text)]
    assert not problems, "\n".join(problems)


def test_the_contract_is_in_the_repository_and_linked_from_the_readme():
    assert (ROOT / "docs" / "API.md").is_file()
    readme = (ROOT / "README.md").read_text()
    assert "(docs/API.md)" in readme


@pytest.mark.parametrize(
    "line",
    [
        # split with `+` so this file does not name them itself (the formatter would join adjacent strings)
        "The contract is [the spec](../" + "shared/SP" + "EC.md).",
        "cd /" + "work/main",
        "The targets come from issue" + " 8.",
        "see Issue #" + "12 for why",
        "as the wallet API of seed" + " 004 keeps",
    ],
)
def test_the_detector_flags_outside_references(line):
    assert forbidden_references(line)


@pytest.mark.parametrize(
    "line",
    ["top_issues: the first five findings", "flask-limiter's issue tracker", "a spec: OpenAPI"],
)
def test_the_detector_leaves_ordinary_words_alone(line):
    assert not forbidden_references(line)


def test_markdown_links_must_stay_inside_and_exist(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "HEALTH.md").write_text("x")
    page = tmp_path / "docs" / "API.md"
    text = "[ok](HEALTH.md#probes) [web](https://example.org/x) [out](../../elsewhere.md) [gone](MISSING.md)"
    problems = broken_links(page, text, root=tmp_path)
    assert problems == ["'../../elsewhere.md' leaves the repository", "'MISSING.md' does not exist"]
