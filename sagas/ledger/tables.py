"""The ledger's tables, as SQLAlchemy Core.

These mirror the migrations in ``migrations/versions``; a migration is the only thing that changes
the live schema. Invariants live here as constraints (one row per (saga, step index), statuses from
a closed set), not in check-then-write code.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

SAGA_STATUSES = (
    "pending",
    "running",
    "compensating",
    "completed",
    "rolled_back",
    "compensation_failed",
    "failed",
    "resolved",
    "awaiting_approval",
)
STEP_STATUSES = (
    "pending",
    "running",
    "completed",
    "failed",
    "compensating",
    "compensated",
    "compensation_failed",
    "skipped",
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData()

saga_runs = Table(
    "saga_runs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("step_names", ARRAY(Text), nullable=False),
    Column("definition_version", Text, nullable=False),
    Column("inputs", JSONB, nullable=False),
    Column("context", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("deployment_id", Text),
    Column("resource", Text),  # what the saga holds (e.g. "droplet:123"); see saga_resource_locks
    Column("triggered_by", Text, nullable=False),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    Column("flow_run_id", UUID(as_uuid=True)),
    Column("error", Text),
    # What the saga asks of its runner beyond its inputs (per-step timeouts); see SagaOptions.
    Column("options", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # The saga this one replaced: Prefect's Retry of a run whose saga had rolled back.
    Column("retry_of", UUID(as_uuid=True)),
    # A person's approval of the point of no return: asked when, until when, and the decision
    # (recorded once: approved or rejected, by whom, when, why).
    Column("approval_requested_at", DateTime(timezone=True)),
    Column("approval_deadline_at", DateTime(timezone=True)),
    Column("approval_decision", Text),
    Column("approval_by", Text),
    Column("approval_note", Text),
    Column("approval_decided_at", DateTime(timezone=True)),
    # Run by ``sagas worker --queue <queue>`` processes; queued by (and watched by) a flow run.
    Column("queue", Text),
    Column("queued_by", UUID(as_uuid=True)),
    # The caps on destructive sagas (``sagas.ledger.admission``): pinned from the kind; a place held
    # from ``admitted_at`` (cleared while awaiting approval); why and since when one waits.
    Column("destructive", Boolean, nullable=False, server_default=text("false")),
    Column("admitted_at", DateTime(timezone=True)),
    Column("waiting_reason", Text),
    Column("waiting_since", DateTime(timezone=True)),
    Column("waiting_checked_at", DateTime(timezone=True)),
    # The one-runner rule: a lease with an owner, an expiry and a fencing epoch that grows on
    # every claim, so a runner that lost its lease can never write again.
    Column("lease_owner", UUID(as_uuid=True)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("lease_epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # An operator's resolution (``sagas resolve``): all three are set exactly when status is resolved.
    Column("resolved_by", Text),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolution_note", Text),
    CheckConstraint(_in("status", SAGA_STATUSES), name="saga_runs_status_known"),
    CheckConstraint(
        "(status = 'resolved') = (resolved_by IS NOT NULL AND resolved_at IS NOT NULL"
        " AND coalesce(length(btrim(resolution_note)), 0) > 0)",
        name="saga_runs_resolution_recorded",
    ),
    CheckConstraint(
        "approval_decision IS NULL OR (approval_decision IN ('approved', 'rejected')"
        " AND approval_by IS NOT NULL AND approval_decided_at IS NOT NULL"
        " AND coalesce(length(btrim(approval_note)), 0) > 0)",
        name="saga_runs_approval_recorded",
    ),
    CheckConstraint("queue IS NULL OR queue ~ '^[a-z][a-z0-9_-]{0,62}$'", name="saga_runs_queue_name"),
)
Index("saga_runs_created_idx", saga_runs.c.created_at.desc(), saga_runs.c.id)
Index("saga_runs_flow_run_idx", saga_runs.c.flow_run_id, saga_runs.c.created_at.desc())
Index("saga_runs_status_created_idx", saga_runs.c.status, saga_runs.c.created_at.desc())
Index("saga_runs_kind_created_idx", saga_runs.c.kind, saga_runs.c.created_at.desc())
Index(
    "saga_runs_status_kind_created_idx",
    saga_runs.c.status,
    saga_runs.c.kind,
    saga_runs.c.created_at.desc(),
)
Index(
    "saga_runs_deployment_created_idx",
    saga_runs.c.deployment_id,
    saga_runs.c.created_at.desc(),
    postgresql_where=saga_runs.c.deployment_id.isnot(None),
)
Index(
    "saga_runs_unfinished_idx",
    saga_runs.c.created_at,
    postgresql_where=text("status IN ('pending', 'running', 'compensating', 'awaiting_approval')"),
)
Index(
    "saga_runs_queued_idx",
    saga_runs.c.queue,
    saga_runs.c.created_at,
    postgresql_where=text(
        "queue IS NOT NULL AND status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
    ),
)
Index("saga_runs_queued_by_idx", saga_runs.c.queued_by, postgresql_where=saga_runs.c.queued_by.isnot(None))
Index(
    "saga_runs_destructive_live_idx",
    saga_runs.c.deployment_id,
    postgresql_where=text(
        "destructive AND admitted_at IS NOT NULL"
        " AND status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
    ),
)

saga_step_results = Table(
    "saga_step_results",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("saga_id", UUID(as_uuid=True), ForeignKey("saga_runs.id", ondelete="CASCADE"), nullable=False),
    Column("step_idx", Integer, nullable=False),
    Column("step_name", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("idempotency_key", Text),
    Column("output", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("compensation_attempts", Integer, nullable=False, server_default=text("0")),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    Column("compensation_started_at", DateTime(timezone=True)),
    Column("compensated_at", DateTime(timezone=True)),
    # Set just before the step's first provider write: null proves nothing was ever sent.
    Column("write_started_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    UniqueConstraint("saga_id", "step_idx", name="saga_step_results_saga_step_key"),
    CheckConstraint(_in("status", STEP_STATUSES), name="saga_step_results_status_known"),
    CheckConstraint("step_idx >= 0", name="saga_step_results_idx_nonnegative"),
)

# One active saga per resource: a row here while a saga that acts on the resource is unfinished.
saga_resource_locks = Table(
    "saga_resource_locks",
    metadata,
    Column("resource", Text, primary_key=True),
    Column("saga_id", UUID(as_uuid=True), ForeignKey("saga_runs.id", ondelete="CASCADE"), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
Index("saga_resource_locks_saga_idx", saga_resource_locks.c.saga_id)
Index(
    "saga_step_results_idempotency_key_uq",
    saga_step_results.c.idempotency_key,
    unique=True,
    postgresql_where=saga_step_results.c.idempotency_key.isnot(None),
)

# What operators did outside a saga's runner (resolve, delete an orphan): an audit trail that
# outlives the sagas it names, so ``target`` is text ("saga:<id>", "snapshot:<id>"), not a key.
operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("performed_by", Text, nullable=False),
    Column("performed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
Index("operator_actions_performed_idx", operator_actions.c.performed_at.desc(), operator_actions.c.id)
Index("operator_actions_target_idx", operator_actions.c.target)

# The DigitalOcean rate budget every process shares (migration 0008; the rules are in
# ``sagas/digitalocean/shared_budget.py``, the SQL in ``rate_budget_lease``). Keyed by a SHA-256 of
# the token, never the token. These rows are the budget's, not the ledger's: no saga reads them.
rate_budgets = Table(
    "rate_budgets",
    metadata,
    Column("token_key", Text, primary_key=True),
    # The provider's word when it ran low: ``allowance`` more requests until ``allowance_until``;
    # nothing at all until ``paused_until`` (a burst 429's retry-after).
    Column("allowance", Integer),
    Column("allowance_until", DateTime(timezone=True)),
    Column("paused_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("token_key ~ '^[0-9a-f]{64}$'", name="rate_budgets_token_key_check"),
)

# Slots granted to one process: counted in the minute window until ``minute_until`` and in the
# hour window until ``hour_until`` (``use_by`` + window, or the last answer + window once settled).
rate_budget_leases = Table(
    "rate_budget_leases",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("token_key", Text, ForeignKey("rate_budgets.token_key", ondelete="CASCADE"), nullable=False),
    Column("holder", Text, nullable=False),  # host:pid:random of the process
    Column("priority", SmallInteger, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("use_by", DateTime(timezone=True), nullable=False),
    Column("minute_until", DateTime(timezone=True), nullable=False),
    Column("hour_until", DateTime(timezone=True), nullable=False),
    CheckConstraint("priority BETWEEN 0 AND 2", name="rate_budget_leases_priority_check"),
    CheckConstraint("slots >= 0", name="rate_budget_leases_slots_check"),
)
Index(
    "rate_budget_leases_live_idx",
    rate_budget_leases.c.token_key,
    rate_budget_leases.c.hour_until,
    postgresql_include=["minute_until", "slots"],
)

# A process waiting for slots at a priority, until ``until`` (renewed while it waits).
rate_budget_waiters = Table(
    "rate_budget_waiters",
    metadata,
    Column(
        "token_key",
        Text,
        ForeignKey("rate_budgets.token_key", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("holder", Text, primary_key=True),
    Column("priority", SmallInteger, primary_key=True),
    Column("until", DateTime(timezone=True), nullable=False),
    CheckConstraint("priority BETWEEN 0 AND 2", name="rate_budget_waiters_priority_check"),
)

# Running totals of the metric counts every process sends (migration 0012; ``sagas/telemetry.py``
# counts, ``sagas/ledger/metrics.py`` adds and reads). Keyed by series: name and labels.
metric_counters = Table(
    "metric_counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("labels", JSONB, primary_key=True, server_default=text("'{}'::jsonb")),
    Column("value", Double, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint("jsonb_typeof(labels) = 'object'", name="metric_counters_labels_check"),
)
