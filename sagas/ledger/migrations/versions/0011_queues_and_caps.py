"""Queues of sagas for long-lived workers, and the caps on destructive sagas running at once.

- ``queue`` (text): the queue whose ``sagas worker --queue NAME`` processes run the saga; null for
  a saga its own flow run drives. ``queued_by`` (uuid): the flow run that queued it and watches it
  (the fleet's). A worker finds work through ``saga_runs_queued_idx`` (unfinished queued sagas only,
  so it stays small however long the ledger grows); a fleet run counts its sagas through
  ``saga_runs_queued_by_idx``.
- ``destructive`` (bool): pinned from the kind when the saga is recorded (offboard, rollback,
  update; a test saga running a pivot). ``admitted_at``: when it took a place under the caps;
  cleared when it stops to await a person's approval (a waiting saga holds no place), set again
  when it goes on. ``waiting_reason`` / ``waiting_since`` / ``waiting_checked_at``: a saga that
  waits for a place says why, since when, and when its waiter last asked.
  ``saga_runs_destructive_live_idx`` holds only the destructive sagas holding a place, which is what
  every admission counts (under a transaction-scoped advisory lock, ``sagas.ledger.admission``).

Existing unfinished offboard, rollback and update sagas are marked destructive and admitted as of
their start, so the first count after the upgrade sees them.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_UNFINISHED = "('pending', 'running', 'compensating')"


def upgrade() -> None:
    op.execute("ALTER TABLE saga_runs ADD COLUMN queue text")
    op.execute("ALTER TABLE saga_runs ADD COLUMN queued_by uuid")
    op.execute("ALTER TABLE saga_runs ADD COLUMN destructive boolean NOT NULL DEFAULT false")
    op.execute("ALTER TABLE saga_runs ADD COLUMN admitted_at timestamptz")
    op.execute("ALTER TABLE saga_runs ADD COLUMN waiting_reason text")
    op.execute("ALTER TABLE saga_runs ADD COLUMN waiting_since timestamptz")
    op.execute("ALTER TABLE saga_runs ADD COLUMN waiting_checked_at timestamptz")
    op.execute(
        "ALTER TABLE saga_runs ADD CONSTRAINT saga_runs_queue_name"
        " CHECK (queue IS NULL OR queue ~ '^[a-z][a-z0-9_-]{0,62}$')"
    )
    op.execute(
        "CREATE INDEX saga_runs_queued_idx ON saga_runs (queue, created_at)"
        " WHERE queue IS NOT NULL AND status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
    )
    op.execute("CREATE INDEX saga_runs_queued_by_idx ON saga_runs (queued_by) WHERE queued_by IS NOT NULL")
    op.execute(
        "CREATE INDEX saga_runs_destructive_live_idx ON saga_runs (deployment_id)"
        " WHERE destructive AND admitted_at IS NOT NULL"
        " AND status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
    )
    op.execute(
        "UPDATE saga_runs SET destructive = true,"
        f" admitted_at = CASE WHEN status IN {_UNFINISHED} THEN coalesce(started_at, created_at) END"
        " WHERE kind IN ('offboard', 'rollback', 'update')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS saga_runs_destructive_live_idx")
    op.execute("DROP INDEX IF EXISTS saga_runs_queued_by_idx")
    op.execute("DROP INDEX IF EXISTS saga_runs_queued_idx")
    op.execute("ALTER TABLE saga_runs DROP CONSTRAINT saga_runs_queue_name")
    for column in (
        "waiting_checked_at",
        "waiting_since",
        "waiting_reason",
        "admitted_at",
        "destructive",
        "queued_by",
        "queue",
    ):
        op.execute(f"ALTER TABLE saga_runs DROP COLUMN {column}")
