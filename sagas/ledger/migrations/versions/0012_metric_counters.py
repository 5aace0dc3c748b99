"""Metric counters every process adds to: what the saga rows do not record (provider requests and
429s, rate-budget waits, step timings, retries, lease losses).

One row per series, keyed by (name, labels), holding the running total of every process's counts.
A process sends additive deltas (``sagas/telemetry.py``), so processes on any machines add up and
a process that ended keeps what it sent. No saga reads these rows; they are for ``sagas metrics``.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE metric_counters (
            name text NOT NULL,
            labels jsonb NOT NULL DEFAULT '{}'::jsonb,
            value double precision NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, labels),
            CHECK (jsonb_typeof(labels) = 'object')
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS metric_counters")
