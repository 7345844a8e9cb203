"""`flask apikeys create|list|revoke`."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from ..db import run_transaction
from ..errors import ApiError
from ..timeutil import isoformat
from . import service

apikeys_cli = AppGroup("apikeys", help="Manage API keys.")


@apikeys_cli.command("create")
@click.option("--name", required=True, help="A unique name for the key's owner.")
@click.option("--role", type=click.Choice(service.ROLES), default="client", show_default=True)
@click.option("--per-minute", type=click.IntRange(min=1), default=None, help="Own per-minute limit.")
@click.option("--per-hour", type=click.IntRange(min=1), default=None, help="Own per-hour limit.")
def create(name, role, per_minute, per_hour):
    """Create a key and print it once (it cannot be shown again)."""
    try:
        key = run_transaction(service.create, name=name, role=role, per_minute=per_minute, per_hour=per_hour)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Created {role} key {name!r}. Store it now; it will not be shown again:")
    click.echo(key)


@apikeys_cli.command("list")
def list_():
    """List keys (never the key itself)."""
    for k in run_transaction(service.list_keys):
        state = f"revoked {isoformat(k['revoked_at'])}" if k["revoked_at"] else "active"
        limits = f"{k['rate_limit_per_minute'] or '-'}/min {k['rate_limit_per_hour'] or '-'}/h"
        used = isoformat(k["last_used_at"]) or "never"
        created = isoformat(k["created_at"])
        click.echo(f"{k['name']}\t{k['role']}\t{state}\tcreated {created}\tused {used}\t{limits}")


@apikeys_cli.command("revoke")
@click.argument("name")
def revoke(name):
    """Revoke the key called NAME."""
    try:
        run_transaction(service.revoke, name)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Revoked {name!r}.")
