"""Renewing a lease rewrites no index: the runner's per-step writes become HOT updates.

Every fenced write sets ``saga_runs.lease_expires_at``. While that column was indexed (the
recovery sweep's partial index), each write was a non-HOT update that added an entry to every one
of the table's eight indexes. The sweep's index now keys on ``created_at`` (the order it reads
in; it filters the few unfinished rows on the lease), and both tables the runner updates leave
room in each page for the new row version.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS saga_runs_recoverable_idx")
    op.execute(
        "CREATE INDEX saga_runs_unfinished_idx ON saga_runs (created_at)"
        " WHERE status IN ('pending', 'running', 'compensating')"
    )
    op.execute("ALTER TABLE saga_runs SET (fillfactor = 80)")
    op.execute("ALTER TABLE saga_step_results SET (fillfactor = 80)")


def downgrade() -> None:
    op.execute("ALTER TABLE saga_step_results RESET (fillfactor)")
    op.execute("ALTER TABLE saga_runs RESET (fillfactor)")
    op.execute("DROP INDEX IF EXISTS saga_runs_unfinished_idx")
    op.execute(
        "CREATE INDEX saga_runs_recoverable_idx ON saga_runs (lease_expires_at)"
        " WHERE status IN ('pending', 'running', 'compensating')"
    )
