"""Vacuum the tokens table after a fixed number of dead rows, not a fifth of the table.

Every activation rewrites one token row and moves its `expires_at` index
entry, so the low end of that index (where the next activation starts
looking) fills with dead entries. PostgreSQL's default waits for 20 % of the
table to be dead: 200,000 rows on a pool of a million, while each activation
steps over the dead entries. A fixed threshold vacuums big pools as often as
small ones. PostgreSQL only; nothing to do on SQLite.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SETTINGS = {"autovacuum_vacuum_scale_factor": "0", "autovacuum_vacuum_threshold": "2000"}


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tokens SET ({', '.join(f'{k} = {v}' for k, v in SETTINGS.items())})")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tokens RESET ({', '.join(SETTINGS)})")
