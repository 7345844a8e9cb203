#!/usr/bin/env python3
"""Render the nginx templates of tokenpool (stdlib only).

Every ``*.template`` under ``nginx/templates/`` is written, without its
suffix and at the same relative path, under the output directory (default:
``nginx/`` itself, which refreshes the committed defaults). Only the
placeholders listed in ``DEFAULTS`` are replaced, and only in the braced form
``${NAME}``; nginx's own variables (``$host``, ``$request_id``) are lowercase
and left alone, exactly as ``envsubst`` with a variable list would.

Values come from the environment, falling back to ``DEFAULTS``:

    python3 nginx/render.py                      # refresh nginx/nginx.conf ...
    UPSTREAMS='server 10.0.0.5:8000; server 10.0.0.6:8000;' \\
        python3 nginx/render.py --out /etc/nginx  # render for a host
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
SUFFIX = ".template"

DEFAULTS = {
    "LISTEN_PORT": "80",
    "SERVER_NAME": "~.",
    "UPSTREAMS": "server 127.0.0.1:8000 max_fails=3 fail_timeout=10s;",
    "METRICS_ALLOW": (
        "allow 127.0.0.1; allow ::1; allow 10.0.0.0/8; allow 172.16.0.0/12; allow 192.168.0.0/16;"
    ),
    "NGINX_PID": "/run/nginx.pid",
    "NGINX_ERROR_LOG": "/var/log/nginx/error.log",
    "NGINX_ACCESS_LOG": "/var/log/nginx/access.log",
    "NGINX_TEMP_DIR": "/var/lib/nginx",
}

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def placeholders(text: str) -> set[str]:
    """Names of the ``${NAME}`` placeholders used in ``text``."""
    return set(PLACEHOLDER.findall(text))


def render_text(text: str, values: dict[str, str]) -> str:
    """Replace each known ``${NAME}``; raise KeyError on an unknown one."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"unknown placeholder ${{{name}}}")
        return values[name]

    return PLACEHOLDER.sub(sub, text)


def values_from(env: dict[str, str] | None = None, **overrides: str) -> dict[str, str]:
    """DEFAULTS, overridden by ``env`` (os.environ by default), then by kwargs."""
    env = os.environ if env is None else env
    values = {name: env.get(name, default) for name, default in DEFAULTS.items()}
    values.update(overrides)
    return values


def templates() -> list[Path]:
    return sorted(TEMPLATE_DIR.rglob("*" + SUFFIX))


def render_all(out_dir: Path, values: dict[str, str]) -> list[Path]:
    """Render every template into ``out_dir``; return the written paths."""
    written = []
    for template in templates():
        relative = template.relative_to(TEMPLATE_DIR)
        target = out_dir / str(relative)[: -len(SUFFIX)]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_text(template.read_text(), values))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: nginx/)")
    args = parser.parse_args(argv)
    for path in render_all(args.out, values_from()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
