"""Listing by status and kind together stays an index walk, even when nothing matches.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS saga_runs_status_kind_created_idx ON saga_runs (status, kind, created_at DESC)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS saga_runs_status_kind_created_idx")
