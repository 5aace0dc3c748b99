"""The approval gate: a saga that asks a person waits before its point of no return.

A saga whose options say ``require_approval`` stops before the step its kind names (its first
customer-visible change, ``KindDefinition.approval_gate``) and waits ``awaiting_approval``, with a
deadline. A person's decision is written without the lease (``sagas approve``/``reject``), so the
gate reads it fresh: approved -> the saga goes on; rejected or cancelled -> it rolls back; no answer
by the deadline -> it is rejected by the deadline, and says so. The runner acts on what this says.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sagas.errors import InputError
from sagas.hold import SagaHold
from sagas.ledger.store import Ledger
from sagas.models import ApprovalDecision, SagaRun, SagaStatus
from sagas.steps import Catalog

_log = logging.getLogger("sagas.runner")


def gate_index(catalog: Catalog, saga: SagaRun) -> int:
    """The index of the step a person must approve first, or -1 when this saga asks nobody."""
    if not saga.options.get("require_approval"):
        return -1
    return catalog.kind(saga.kind).approval_gate(saga.step_names)


def at_the_gate(hold: SagaHold, saga: SagaRun, before: str) -> SagaStatus | None:
    """At the gate (``before`` is the step it guards): go on (None) once approved; roll back once
    rejected or cancelled; else record the wait and stop (``awaiting_approval``)."""
    ledger = hold.ledger
    current = ledger.get_saga(saga.id)  # a decision is written without the lease: read it now
    if current.approval_decision is ApprovalDecision.APPROVED:
        return None
    if current.approval_decision is ApprovalDecision.REJECTED:
        return hold.begin_rollback(f"rejected by {current.approval_by}: {current.approval_note}")
    if current.cancel_requested:
        return hold.begin_rollback("cancelled while awaiting approval")
    deadline = (
        current.options.get("approval_deadline_seconds") or hold.services.settings.approval_deadline_seconds
    )
    if ledger.await_approval(hold.lease, float(deadline)):
        return hold.begin_rollback("cancelled while awaiting approval")
    _log.info("saga %s awaits a person's approval before %s", saga.id, before)
    return SagaStatus.AWAITING_APPROVAL


def after_the_wait(ledger: Ledger, saga: SagaRun) -> SagaRun:
    """A waiting saga whose deadline passed without an answer is rejected, and says so."""
    if saga.approval_decision is not None or saga.cancel_requested:
        return saga
    deadline = saga.approval_deadline_at
    if deadline is None or datetime.now(UTC) < deadline:
        return saga
    waited = deadline - (saga.approval_requested_at or deadline)
    try:
        return ledger.decide_approval(
            saga.id,
            ApprovalDecision.REJECTED,
            by="the approval deadline",
            note=f"no answer within {waited.total_seconds():.0f}s (until {deadline:%Y-%m-%d %H:%M:%S %Z})",
        )
    except InputError:
        return ledger.get_saga(saga.id)  # a person answered at the last moment
