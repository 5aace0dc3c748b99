"""A saga started by Prefect's Retry of a run whose saga rolled back names the saga it retries.

Retrying a flow run whose saga rolled back starts a new saga under the same flow run (the old one
is finished for good); ``retry_of`` links the new one to it, so both the ledger and the run's logs
say what the retry was for.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE saga_runs ADD COLUMN retry_of uuid")
    op.execute("CREATE INDEX saga_runs_flow_run_idx ON saga_runs (flow_run_id, created_at DESC)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS saga_runs_flow_run_idx")
    op.execute("ALTER TABLE saga_runs DROP COLUMN retry_of")
