"""Analyze the tokens table after a fixed number of changed rows, not a tenth of the table.

The activation's first statement looks up the caller's own lease in the pool
(`pool_id`, `current_user_id`). PostgreSQL plans it from the table's
statistics, and those of a freshly seeded pool say that no token is held
(`current_user_id` all null): then the sweeper's index of held tokens looks as
cheap as the unique index of holders, and the lookup that picks it scans every
held lease of every pool (measured: 12,000 index entries and 8.7 ms per
activation, against 2 buffers and 0.02 ms once the table was analysed; the
activation rate fell by half and more). PostgreSQL's default analyses a table
after a tenth of its rows changed: 100,000 activations on a pool of a million,
while each of them scans. A fixed threshold analyses big pools as often as
small ones (as 0003 does for vacuum). It needs autovacuum on (PostgreSQL's
default). PostgreSQL only; nothing to do on SQLite.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SETTINGS = {"autovacuum_analyze_scale_factor": "0", "autovacuum_analyze_threshold": "2000"}


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tokens SET ({', '.join(f'{k} = {v}' for k, v in SETTINGS.items())})")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tokens RESET ({', '.join(SETTINGS)})")
