"""Events carry their token's pool and their lease's fencing token: no change of its own.

Revision 0007 already rewrites the usage triggers of revision 0006 so that
each event reads its pool through the token and its fencing token from the
usage row. This revision was written for the same change at the same time;
it is kept, empty, so that a database stamped 0008 upgrades and downgrades
along the one line of revisions (downgrading it must leave 0007's triggers,
not put back 0006's, which wrote every event as the `default` pool's).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
