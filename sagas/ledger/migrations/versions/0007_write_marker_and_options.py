"""A step records when it may first have sent a provider write; a saga records its runner options.

``saga_step_results.write_started_at`` is set (durably, fenced) just before a step's first provider
write. It is what the runner's two rules about doubt read:

- a compensation of a step whose row has no ``write_started_at`` has nothing to undo: nothing was
  ever sent, so it succeeds without calling the provider (a provider that was down before the
  first write no longer leaves a saga ``compensation_failed`` holding its droplet);
- a *pivot* whose row has one is past the point of no return: nothing before it is compensated.

Rows written before this migration get their ``started_at``: they may have written anything, so
they are treated as having written (the old behaviour).

``saga_runs.options`` holds what a saga asks of its runner beyond its inputs (per-step timeouts).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE saga_step_results ADD COLUMN write_started_at timestamptz")
    op.execute("UPDATE saga_step_results SET write_started_at = coalesce(started_at, now())")
    op.execute("ALTER TABLE saga_runs ADD COLUMN options jsonb NOT NULL DEFAULT '{}'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE saga_runs DROP COLUMN options")
    op.execute("ALTER TABLE saga_step_results DROP COLUMN write_started_at")
