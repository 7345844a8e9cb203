"""`flask pools create|list|update|delete`: thin wrappers over the pool service, as the routes."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from ..clock import token_time
from ..db import run_transaction
from ..errors import ApiError
from ..models import POLICIES
from ..tokens.schemas import serialise
from . import service

pools_cli = AppGroup("pools", help="Manage named pools.")


def _settings(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _run(*args, **kwargs):
    try:
        return run_transaction(*args, **kwargs)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None


def _echo(pool: dict) -> None:
    click.echo(json.dumps(serialise(pool), sort_keys=True))


def _setting_options(command):
    for option in reversed(
        (
            click.option("--size", type=int),
            click.option("--lifetime-seconds", "lifetime_seconds", type=int),
            click.option("--policy", type=click.Choice(POLICIES)),
            click.option("--max-lifetime-seconds", "max_lifetime_seconds", type=int),
            click.option("--max-queue", "max_queue", type=int),
            click.option("--max-wait-seconds", "max_wait_seconds", type=int),
        )
    ):
        command = option(command)
    return command


@pools_cli.command("create")
@click.argument("name")
@_setting_options
def create(name, **options):
    """Create a pool (size and lifetime required), like POST /api/pools."""
    try:
        spec = service.validate({"name": name} | _settings(**options), creating=True)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    _echo(_run(service.create, spec, now=token_time()))


@pools_cli.command("list")
def list_pools():
    """Every pool with its counts, one JSON object a line."""
    after = None
    while True:
        items, after = _run(service.list_pools, limit=1000, after=after, now=token_time())
        for pool in items:
            _echo(pool)
        if after is None:
            return


@pools_cli.command("update")
@click.argument("name")
@_setting_options
def update(name, **options):
    """Change a pool's settings, like PATCH /api/pools/<name>."""
    try:
        changes = service.validate(_settings(**options), creating=False)
    except ApiError as exc:
        raise click.ClickException(exc.message) from None
    _echo(_run(service.update_pool, name, changes, now=token_time()))


@pools_cli.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="End the pool's open leases (reason cleared).")
def delete(name, force):
    """Delete a pool, its tokens and their history, like DELETE /api/pools/<name>."""
    cleared = _run(service.delete_pool, name, force=force, now=token_time())
    click.echo(f"pool {name} deleted ({cleared} leases cleared)")
