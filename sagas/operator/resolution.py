"""What an operator does to a saga that needs one: retry its compensation, or resolve it by hand.

- ``retry_compensation``: finish a rollback whose undo kept failing, through the runner itself
  (``Runner.advance``), so there is one rollback path, not two.
- ``resolve_saga``: an operator fixed a saga by hand; record who, when and why, make it terminal
  and free its resource, under the saga's lease so a live runner is never overruled.

What this module must never do: decide from a guess when the ledger can say it, or touch the
provider.
"""

from __future__ import annotations

import uuid

from sagas.errors import InputError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus
from sagas.runner import Mode, Runner
from sagas.telemetry import SAGAS_SETTLED


def _way_out(saga: SagaRun) -> str:
    """What to run instead, for a saga in a status the command refuses."""
    sid = saga.id
    return {
        SagaStatus.PENDING: f"`sagas resume {sid}` runs it, `sagas cancel {sid}` rolls it back",
        SagaStatus.RUNNING: f"`sagas resume {sid}` finishes it once its runner is gone; `sagas cancel {sid}`",
        SagaStatus.COMPENSATING: f"`sagas resume {sid}` finishes its rollback",
        SagaStatus.COMPENSATION_FAILED: f"`sagas retry-compensation {sid}`, or `sagas resolve {sid}`",
        SagaStatus.FAILED: f"`sagas resume {sid}` retries it forward; `sagas resolve {sid}` if fixed by hand",
        SagaStatus.COMPLETED: "nothing: it finished",
        SagaStatus.ROLLED_BACK: "nothing: it was undone (`sagas orphans` finds anything left behind)",
        SagaStatus.RESOLVED: "nothing: it was resolved by hand (`sagas orphans` finds anything left behind)",
    }[saga.status]


def retry_compensation(runner: Runner, saga_id: uuid.UUID, *, by: str) -> SagaRun:
    """Finish the rollback of a ``compensation_failed`` saga; refuse (InputError) any other status.

    The runner does the work (it continues a compensation_failed rollback); ROLLBACK mode makes
    sure this command can only ever undo, never run a step forward. SagaBusyError when held.
    """
    saga = runner.ledger.get_saga(saga_id)
    if saga.status is not SagaStatus.COMPENSATION_FAILED:
        raise InputError(
            f"saga {saga.id} is {saga.status.value}, not compensation_failed: retry-compensation only"
            f" finishes a rollback whose undo failed. Instead: {_way_out(saga)}"
        )
    result = runner.advance(saga.id, Mode.ROLLBACK)
    runner.ledger.record_operator_action(
        "retry_compensation",
        f"saga:{saga.id}",
        {"previous_error": saga.error, "outcome": result.status.value, "error": result.error},
        by,
    )
    return result


def resolve_saga(ledger: Ledger, saga_id: uuid.UUID, *, by: str, note: str, lease_seconds: float) -> SagaRun:
    """Record that an operator fixed the saga by hand: status ``resolved``, who, when, why.

    Refused (InputError, nothing written) for a finished saga or an empty note; SagaBusyError
    while a runner holds the saga: the lease is claimed exactly as a runner claims it.
    """
    note = note.strip()
    by = by.strip()
    if not note:
        raise InputError("--note is required: say what was done by hand, for whoever reads the ledger next")
    if len(note) > 4000:
        raise InputError("--note must be at most 4000 characters")
    if not by or len(by) > 200:
        raise InputError("--by must be 1-200 characters")
    saga = ledger.get_saga(saga_id)
    if saga.status.is_terminal:
        raise InputError(f"saga {saga.id} is already {saga.status.value}: {_way_out(saga)}")
    lease = ledger.claim(saga.id, lease_seconds)
    try:
        ledger.resolve_saga(lease, by=by, note=note)  # re-checks the status under the lease
    finally:
        ledger.release(lease)
    SAGAS_SETTLED.inc(kind=saga.kind, status=SagaStatus.RESOLVED.value)
    return ledger.get_saga(saga.id)
