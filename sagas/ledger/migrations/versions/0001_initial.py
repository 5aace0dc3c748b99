"""Initial ledger: saga runs with their lease, step results keyed by (saga, step index).

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE saga_runs (
            id uuid PRIMARY KEY,
            kind text NOT NULL,
            step_names text[] NOT NULL,
            definition_version text NOT NULL,
            inputs jsonb NOT NULL,
            context jsonb NOT NULL DEFAULT '{}'::jsonb,
            status text NOT NULL DEFAULT 'pending',
            deployment_id text,
            triggered_by text NOT NULL,
            cancel_requested boolean NOT NULL DEFAULT false,
            flow_run_id uuid,
            error text,
            lease_owner uuid,
            lease_expires_at timestamptz,
            lease_epoch bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            CONSTRAINT saga_runs_status_known CHECK (status IN (
                'pending', 'running', 'compensating', 'completed', 'rolled_back',
                'compensation_failed', 'failed'))
        )
        """
    )
    op.execute("CREATE INDEX saga_runs_created_idx ON saga_runs (created_at DESC, id)")
    op.execute("CREATE INDEX saga_runs_status_created_idx ON saga_runs (status, created_at DESC)")
    op.execute("CREATE INDEX saga_runs_kind_created_idx ON saga_runs (kind, created_at DESC)")
    op.execute(
        "CREATE INDEX saga_runs_deployment_created_idx ON saga_runs (deployment_id, created_at DESC)"
        " WHERE deployment_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX saga_runs_recoverable_idx ON saga_runs (lease_expires_at)"
        " WHERE status IN ('pending', 'running', 'compensating')"
    )
    op.execute(
        """
        CREATE TABLE saga_step_results (
            id bigserial PRIMARY KEY,
            saga_id uuid NOT NULL REFERENCES saga_runs (id) ON DELETE CASCADE,
            step_idx integer NOT NULL,
            step_name text NOT NULL,
            status text NOT NULL DEFAULT 'pending',
            idempotency_key text,
            output jsonb NOT NULL DEFAULT '{}'::jsonb,
            error text,
            attempts integer NOT NULL DEFAULT 0,
            compensation_attempts integer NOT NULL DEFAULT 0,
            started_at timestamptz,
            completed_at timestamptz,
            compensation_started_at timestamptz,
            compensated_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT saga_step_results_saga_step_key UNIQUE (saga_id, step_idx),
            CONSTRAINT saga_step_results_status_known CHECK (status IN (
                'pending', 'running', 'completed', 'failed', 'compensating', 'compensated',
                'compensation_failed', 'skipped')),
            CONSTRAINT saga_step_results_idx_nonnegative CHECK (step_idx >= 0)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE saga_step_results")
    op.execute("DROP TABLE saga_runs")
