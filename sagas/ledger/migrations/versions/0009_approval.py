"""A person approves the point of no return: the ``awaiting_approval`` status and its decision.

A kind that asks a person before its first customer-visible change stops there ``awaiting_approval``,
keeping its droplet lock. The decision (approved or rejected, by whom, when, why) is recorded once,
on the saga's row, and can never be changed afterwards; the deadline is the ledger's, enforced by
the recovery sweep. A decision and its who/when/why go together (a CHECK keeps them so).

Revision ID: 0009
Revises: 0008

Downgrading fails while a saga is ``awaiting_approval``: the old status set cannot hold it.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_STATUSES_0003 = (
    "'pending', 'running', 'compensating', 'completed', 'rolled_back', 'compensation_failed',"
    " 'failed', 'resolved'"
)


def upgrade() -> None:
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_status_known")
    op.execute(
        "ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_status_known"
        f" CHECK (status IN ({_STATUSES_0003}, 'awaiting_approval'))"
    )
    op.execute("ALTER TABLE saga_runs ADD COLUMN approval_requested_at timestamptz")
    op.execute("ALTER TABLE saga_runs ADD COLUMN approval_deadline_at timestamptz")
    op.execute("ALTER TABLE saga_runs ADD COLUMN approval_decision text")
    op.execute("ALTER TABLE saga_runs ADD COLUMN approval_by text")
    op.execute("ALTER TABLE saga_runs ADD COLUMN approval_note text")
    op.execute("ALTER TABLE saga_runs ADD COLUMN approval_decided_at timestamptz")
    op.execute(
        """
        ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_approval_recorded CHECK (
            approval_decision IS NULL
            OR (approval_decision IN ('approved', 'rejected') AND approval_by IS NOT NULL
                AND approval_decided_at IS NOT NULL AND coalesce(length(btrim(approval_note)), 0) > 0))
        """
    )
    op.execute("DROP INDEX IF EXISTS saga_runs_unfinished_idx")
    op.execute(
        "CREATE INDEX saga_runs_unfinished_idx ON saga_runs (created_at)"
        " WHERE status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS saga_runs_unfinished_idx")
    op.execute(
        "CREATE INDEX saga_runs_unfinished_idx ON saga_runs (created_at)"
        " WHERE status IN ('pending', 'running', 'compensating')"
    )
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_approval_recorded")
    for column in (
        "approval_decided_at",
        "approval_note",
        "approval_by",
        "approval_decision",
        "approval_deadline_at",
        "approval_requested_at",
    ):
        op.execute(f"ALTER TABLE saga_runs DROP COLUMN {column}")
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_status_known")
    op.execute(
        f"ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_status_known CHECK (status IN ({_STATUSES_0003}))"
    )
