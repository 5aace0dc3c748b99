"""One active saga per resource, and one step per idempotency key, enforced by the database.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE saga_runs ADD COLUMN resource text")
    op.execute(
        """
        CREATE TABLE saga_resource_locks (
            resource text PRIMARY KEY,
            saga_id uuid NOT NULL REFERENCES saga_runs (id) ON DELETE CASCADE,
            acquired_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX saga_resource_locks_saga_idx ON saga_resource_locks (saga_id)")
    op.execute(
        "CREATE UNIQUE INDEX saga_step_results_idempotency_key_uq ON saga_step_results (idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX saga_step_results_idempotency_key_uq")
    op.execute("DROP TABLE saga_resource_locks")
    op.execute("ALTER TABLE saga_runs DROP COLUMN resource")
