"""A person's approval of a saga's point of no return: the plan they decide on, and their decision.

A saga of a kind that asks (offboard and rollback by default; any saga with ``require_approval``)
stops ``awaiting_approval`` before its first customer-visible change, with what it made so far
(the final or safety snapshot) in place and its droplet still locked. ``approval_plan`` says what
will be destroyed and what was kept; ``decide`` records the decision once, for good (who, when,
why, with an audit row); the runner acts on it the next time it takes the saga: approved, it goes
on; rejected, it rolls back. No decision within the deadline is a rejection (the recovery sweep).

Nothing here imports Prefect: flows/approval.py shows the plan as the run's resume form.
"""

from __future__ import annotations

import uuid

from sagas.errors import InputError
from sagas.ledger.store import Ledger
from sagas.models import ApprovalDecision, Reversibility, SagaRun, SagaStatus, StepResult, StepStatus
from sagas.steps import Catalog


def approval_plan(catalog: Catalog, saga: SagaRun, steps: list[StepResult]) -> str:
    """Markdown: what the saga will do once approved, and what it has kept so far."""
    gate = catalog.kind(saga.kind).approval_gate(saga.step_names)
    lines = [f"**{saga.kind} saga {saga.id}** on {saga.resource or 'no resource'} awaits your approval."]
    kept = [s for s in steps if s.status is StepStatus.COMPLETED and s.output.get("snapshot_id")]
    for s in kept:
        size = s.output.get("snapshot_size_gigabytes")
        lines.append(
            f"- Kept: snapshot `{s.output.get('snapshot_name')}` (id {s.output['snapshot_id']}"
            + (f", {size} GB" if size is not None else "")
            + ")"
        )
    lines.append("")
    lines.append("Once approved it will:")
    for idx, name in enumerate(saga.step_names[gate:], start=gate):
        step = catalog.step(name)
        if not step.applies(saga.inputs):
            lines.append(f"{idx}. `{name}`: skipped ({step.skipped_because})")
            continue
        pivot = step.reversibility_for(saga.inputs) is Reversibility.PIVOT
        mark = " **(cannot be undone)**" if pivot else ""
        lines.append(f"{idx}. `{name}`: {step.summary}{mark}")
    deadline = saga.approval_deadline_at
    if deadline is not None:
        lines.append("")
        lines.append(f"Without an answer by {deadline:%Y-%m-%d %H:%M:%S %Z} it rolls back.")
    lines.append("Rejecting rolls it back: what it made so far is undone.")
    return "\n".join(lines)


def decide(ledger: Ledger, saga_id: uuid.UUID, decision: ApprovalDecision, *, by: str, note: str) -> SagaRun:
    """Record the decision (once); InputError, nothing written, for a bad note or name, a saga
    not awaiting approval, or one already decided."""
    note, by = note.strip(), by.strip()
    if not note:
        raise InputError("--note is required: say why, for whoever reads the ledger next")
    if len(note) > 4000:
        raise InputError("--note must be at most 4000 characters")
    if not by or len(by) > 200:
        raise InputError("--by must be 1-200 characters")
    if any(not c.isprintable() for c in note + by):
        raise InputError("--note and --by must not contain control characters")
    saga = ledger.get_saga(saga_id)
    if saga.status is not SagaStatus.AWAITING_APPROVAL:
        raise InputError(
            f"saga {saga.id} is {saga.status.value}, not awaiting approval: there is nothing to decide"
        )
    return ledger.decide_approval(saga.id, decision, by=by, note=note)
