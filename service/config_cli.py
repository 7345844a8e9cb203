"""`flask config check`: the environment checked, and the settings in effect with secrets masked.

The app was built before the command runs, so a bad application setting has
already stopped it with wsgi.py's one line (exit 1). The command adds
gunicorn's settings (gunicorn.conf.py reads its own variables), the aliases
in use and the alias names that are set but not read.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from .config import ALIASES, ConfigError, mask_url, setting_names

config_cli = AppGroup("config", help="Check the configuration.")

SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_PASSWORD", "_SECRET")
GUNICORN_CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
GUNICORN_SHOWN = ("bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout", "keepalive")


def shown(name: str, value) -> str:
    """`value` as `flask config check` prints it: secrets (names ending _KEY, _TOKEN, _PASSWORD,
    _SECRET) as `***`, the password inside any URL as `***`; unset as blank, booleans as true/false."""
    if value is None:
        return ""
    if name.endswith(SECRET_SUFFIXES) and value:
        return "***"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return str(value)


def gunicorn_settings(conf: Path = GUNICORN_CONF) -> dict:
    """The values gunicorn.conf.py computes from this environment. Raises ConfigError naming the
    variable (the line gunicorn.conf.py stops a start with)."""
    try:
        found = runpy.run_path(str(conf))
    except SystemExit as exc:
        raise ConfigError(str(exc.code)) from None
    return {name: found[name] for name in GUNICORN_SHOWN}


def alias_report() -> list[str]:
    """One line per alias that is set: what it gives, or why it is ignored."""
    lines = []
    for alias in ALIASES:
        if not os.environ.get(alias.name, "").strip():
            continue
        if not alias.accepted:
            lines.append(f"warning: {alias.name} is set but not read: {alias.meaning}")
        elif os.environ.get(alias.canonical, "").strip():
            lines.append(f"warning: {alias.name} is ignored: {alias.canonical} is set and wins")
        else:
            lines.append(f"alias: {alias.name} gives {alias.canonical} ({alias.meaning})")
    return lines


@config_cli.command("check")
def check():
    """Validate the environment; print the settings in effect, secrets masked.

    Exits 1 with one line naming the variable when a value is bad.
    """
    config = current_app.config
    try:
        gunicorn = gunicorn_settings()
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    click.echo(f"configuration OK (APP_ENV={config['APP_ENV']})")
    for name in setting_names(current_app.instance_path, config["APP_ENV"]):
        click.echo(f"{name}={shown(name, config.get(name))}")
    for name, value in gunicorn.items():
        click.echo(f"gunicorn.{name}={value}")
    for line in alias_report():
        click.echo(line)
