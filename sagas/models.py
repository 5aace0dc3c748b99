"""Domain models that cross module seams: saga runs, step results, statuses, the lease."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SagaStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    COMPENSATION_FAILED = "compensation_failed"
    FAILED = "failed"
    RESOLVED = "resolved"  # an operator finished it by hand (``sagas resolve``); who/when/why recorded
    # Stopped before its first customer-visible change until a person approves (or rejects) it;
    # it keeps its droplet lock and holds no runner.
    AWAITING_APPROVAL = "awaiting_approval"

    @property
    def is_terminal(self) -> bool:
        """Finished for good. ``failed`` and ``compensation_failed`` are not: an operator resumes them."""
        return self in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.RESOLVED)

    @property
    def needs_operator(self) -> bool:
        return self in (SagaStatus.COMPENSATION_FAILED, SagaStatus.FAILED)


class ApprovalDecision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    SKIPPED = "skipped"


class Reversibility(StrEnum):
    """What undoing a step means (DESIGN "Words")."""

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


class SagaOptions(BaseModel):
    """What a saga asks of its runner beyond its inputs; recorded with the saga."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_timeouts: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds one attempt of a step may run before it is in doubt, by step name.",
    )
    require_approval: bool | None = Field(
        default=None,
        description="Stop for a person's approval before the first customer-visible change"
        " (unset: the kind's default: on for offboard and rollback).",
    )
    approval_deadline_seconds: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="Without an answer within this long, the saga rolls back (unset: the settings').",
    )

    @field_validator("step_timeouts")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name, seconds in value.items() if not 0 < seconds <= 7 * 86400]
        if bad:
            raise ValueError(f"a step timeout must be between 0 and 604800 seconds: {', '.join(bad)}")
        return value


class NewSaga(BaseModel):
    """A saga as a caller asks for it, already validated against the registry."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    kind: str
    step_names: tuple[str, ...]
    definition_version: str
    inputs: dict[str, Any]
    deployment_id: str | None = None
    triggered_by: str = "manual"
    resource: str | None = None
    flow_run_id: uuid.UUID | None = None  # the Prefect flow run that records and drives it
    options: dict[str, Any] = Field(default_factory=dict)  # a validated SagaOptions, as JSON
    retry_of: uuid.UUID | None = None  # the rolled-back saga a Prefect Retry replaced with this one
    # Counted against the caps on destructive sagas (``DestructiveCaps``); from the kind, pinned.
    destructive: bool = False
    # Run by ``sagas worker --queue <queue>`` processes, not by a flow run or the recovery sweep;
    # ``queued_by`` is the flow run (the fleet's) that queued it, which watches it.
    queue: str | None = None
    queued_by: uuid.UUID | None = None


class SagaRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    kind: str
    step_names: tuple[str, ...]
    definition_version: str
    inputs: dict[str, Any]
    context: dict[str, Any]
    status: SagaStatus
    deployment_id: str | None
    resource: str | None
    triggered_by: str
    cancel_requested: bool
    flow_run_id: uuid.UUID | None
    error: str | None
    lease_owner: uuid.UUID | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Set together by ``sagas resolve`` (a database CHECK keeps them together with the status).
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    resolution_note: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    retry_of: uuid.UUID | None = None
    approval_requested_at: datetime | None = None
    approval_deadline_at: datetime | None = None
    approval_decision: ApprovalDecision | None = None
    approval_by: str | None = None
    approval_note: str | None = None
    approval_decided_at: datetime | None = None
    destructive: bool = False
    queue: str | None = None
    queued_by: uuid.UUID | None = None
    # A destructive saga holds a place under the caps from ``admitted_at`` while it runs; one that
    # waits for a place says why (``waiting_reason``, null once admitted) and since when.
    admitted_at: datetime | None = None
    waiting_reason: str | None = None
    waiting_since: datetime | None = None

    @property
    def waiting_for_admission(self) -> bool:
        return self.waiting_reason is not None and self.admitted_at is None


class StepResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    saga_id: uuid.UUID
    step_idx: int
    step_name: str
    status: StepStatus
    idempotency_key: str | None
    output: dict[str, Any]
    error: str | None
    attempts: int
    compensation_attempts: int
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None = None
    compensation_started_at: datetime | None
    compensated_at: datetime | None
    write_started_at: datetime | None = None  # a provider write may have been sent from then on


class RecordedStep(BaseModel):
    """A step result together with the status of its saga: who owns a resource, and how firmly."""

    model_config = ConfigDict(frozen=True)

    step: StepResult
    saga_status: SagaStatus


class OperatorAction(BaseModel):
    """One thing an operator did outside a saga's own runner (resolve, delete an orphan), for audit."""

    model_config = ConfigDict(frozen=True)

    id: int
    action: str
    target: str
    detail: dict[str, Any]
    performed_by: str
    performed_at: datetime


class Admission(StrEnum):
    """What recording a destructive saga does when its caps are full."""

    REFUSE = "refuse"  # raise DestructiveCapError; nothing is written
    WAIT = "wait"  # record it waiting (with the reason); a later admission lets it start


@dataclass(frozen=True)
class DestructiveCaps:
    """How many destructive sagas may run at once: per account (this ledger) and per customer
    deployment (``deployment_id``). Sagas awaiting a person's approval do not count."""

    per_account: int
    per_deployment: int


@dataclass(frozen=True)
class Lease:
    """A runner's claim on one saga. ``epoch`` is the fencing token: every write checks it."""

    saga_id: uuid.UUID
    owner: uuid.UUID
    epoch: int
    seconds: float


@dataclass(frozen=True)
class NextStep:
    """The step to record started in the same write that records the previous one completed."""

    idx: int
    name: str
    idempotency_key: str
    unless_cancelled: bool  # not past a pivot: a requested cancel stops the saga before this step


@dataclass(frozen=True)
class StepCompletion:
    """What recording a step completed learned: a cancel request, and the next step's row."""

    cancel_requested: bool
    next_started: StepResult | None
