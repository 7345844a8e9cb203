"""`flask tokens seed|sweep`: thin wrappers over the domain."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from ..db import run_transaction
from . import service
from .sweeper import run_sweep

tokens_cli = AppGroup("tokens", help="Manage the token pool.")


@tokens_cli.command("seed")
@click.option("--size", type=int, default=None, help="Pool size (default MAX_ACTIVE_TOKENS).")
def seed(size):
    """Top the pool up to its configured size (idempotent; never deletes)."""
    size = size or current_app.config["MAX_ACTIVE_TOKENS"]

    def progress(done, total):
        click.echo(f"seeded {done}/{total}")

    added = run_transaction(service.seed, size, progress=progress)
    click.echo(f"pool size {size}: {added} tokens added")


@tokens_cli.command("sweep")
def sweep():
    """Close the usages of expired leases once (for cron jobs)."""
    result = run_sweep(current_app._get_current_object())  # type: ignore[attr-defined]  # the app, not its proxy
    click.echo(f"swept: {result.expired} expired leases closed")
