"""When a step's execute failed, so a timeline can draw it.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE saga_step_results ADD COLUMN failed_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE saga_step_results DROP COLUMN failed_at")
