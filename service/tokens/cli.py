"""`flask tokens seed|sweep|prune`: thin wrappers over the domain."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from ..clock import now as clock_now
from ..db import run_transaction
from ..retention import cutoffs, prunable, run_prune
from ..timeutil import isoformat
from . import reads, service
from .sweeper import run_sweep

tokens_cli = AppGroup("tokens", help="Manage the token pool.")


@tokens_cli.command("seed")
@click.option(
    "--size", type=click.IntRange(min=1), default=None, help="Pool size (default MAX_ACTIVE_TOKENS)."
)
def seed(size):
    """Top the pool up to its configured size (idempotent; never deletes)."""
    if size is None:
        size = current_app.config["MAX_ACTIVE_TOKENS"]

    def progress(done, total):  # a large pool is seeded in batches; the last line says the total
        if done < total:
            click.echo(f"seeded {done}/{total}")

    added = run_transaction(service.seed, size, progress=progress)
    total = run_transaction(reads.summary)["total"]  # a pool larger than `size` keeps its size
    click.echo(f"pool size {total}: {added} tokens added")


@tokens_cli.command("sweep")
def sweep():
    """Close the usages of expired leases once (for cron jobs)."""
    result = run_sweep(current_app._get_current_object())  # type: ignore[attr-defined]  # the app, not its proxy
    click.echo(f"swept: {result.expired} expired leases closed")


@tokens_cli.command("prune")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune(dry_run):
    """Delete ended usages, settled tickets and events past their retention (USAGE_RETENTION_DAYS,
    EVENT_RETENTION_HOURS)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the app, not its proxy
    if dry_run:
        cut = cutoffs(app.config, clock_now(app))
        for table, before in cut.tables():
            if before is None:
                click.echo(f"{table}: kept whole (retention 0)")
            else:
                count = run_transaction(prunable, table, before)
                click.echo(f"{table}: {count} older than {isoformat(before)} would be deleted")
        return
    done = run_prune(app)
    click.echo(f"pruned: {done['usages']} usages, {done['tickets']} tickets, {done['events']} events")
