"""Operators: the terminal status ``resolved`` (who, when, why) and an audit table of their actions.

Revision ID: 0003
Revises: 0002

Downgrading fails while a saga is ``resolved``: the old status set cannot say what happened to it.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_STATUSES_0001 = (
    "'pending', 'running', 'compensating', 'completed', 'rolled_back', 'compensation_failed', 'failed'"
)


def upgrade() -> None:
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_status_known")
    op.execute(
        "ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_status_known"
        f" CHECK (status IN ({_STATUSES_0001}, 'resolved'))"
    )
    op.execute("ALTER TABLE saga_runs ADD COLUMN resolved_by text")
    op.execute("ALTER TABLE saga_runs ADD COLUMN resolved_at timestamptz")
    op.execute("ALTER TABLE saga_runs ADD COLUMN resolution_note text")
    # A resolution is never silent: the status and its who/when/why go together.
    op.execute(
        """
        ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_resolution_recorded CHECK (
            (status = 'resolved')
            = (resolved_by IS NOT NULL AND resolved_at IS NOT NULL
               AND coalesce(length(btrim(resolution_note)), 0) > 0))
        """
    )
    op.execute(
        """
        CREATE TABLE operator_actions (
            id bigserial PRIMARY KEY,
            action text NOT NULL,
            target text NOT NULL,
            detail jsonb NOT NULL DEFAULT '{}'::jsonb,
            performed_by text NOT NULL,
            performed_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX operator_actions_performed_idx ON operator_actions (performed_at DESC, id)")
    op.execute("CREATE INDEX operator_actions_target_idx ON operator_actions (target)")


def downgrade() -> None:
    op.execute("DROP TABLE operator_actions")
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_resolution_recorded")
    op.execute("ALTER TABLE saga_runs DROP COLUMN resolution_note")
    op.execute("ALTER TABLE saga_runs DROP COLUMN resolved_at")
    op.execute("ALTER TABLE saga_runs DROP COLUMN resolved_by")
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_status_known")
    op.execute(
        f"ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_status_known CHECK (status IN ({_STATUSES_0001}))"
    )
