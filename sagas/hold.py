"""A runner's hold on one saga: its lease, the heartbeat that keeps it, and what steps run under it.

Everything a step does goes through the hold: its ``StepContext`` (checkpoints and the write marker
written fenced by this lease, the cancel and lease checks at every safe point, the step's deadline)
and the waits between retries, which stop at once when the lease is lost; and the two ways a run
stops short, written under the lease: begin the rollback, or stop ``failed`` past the pivot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sagas.errors import LeaseLostError, LedgerUnavailableError
from sagas.heartbeat import Heartbeat
from sagas.ledger.store import Ledger
from sagas.models import Lease, SagaRun, SagaStatus, StepResult
from sagas.services import Services
from sagas.steps import CANCEL_CHECK_SECONDS, KeyScope, StepContext, StepDefinition

_log = logging.getLogger("sagas.runner")


@dataclass(frozen=True)
class SagaHold:
    ledger: Ledger
    services: Services
    lease: Lease
    heartbeat: Heartbeat

    def check_lease(self, doing: str) -> None:
        if self.heartbeat.lost.is_set():
            raise LeaseLostError(f"the lease on saga {self.lease.saga_id} was lost {doing}")

    def key_scope(self, saga: SagaRun) -> KeyScope:
        return KeyScope(saga_id=saga.id, inputs=saga.inputs, prefix=self.services.settings.name_prefix)

    def timeout(self, saga: SagaRun, step: StepDefinition) -> float:
        """How long one attempt of ``step`` may run: the saga's own option, else the settings',
        else the step's default."""
        own = saga.options.get("step_timeouts", {}).get(step.name)
        if own is not None:
            return float(own)
        return float(self.services.settings.step_timeouts.get(step.name, step.timeout_seconds))

    def begin_rollback(self, error: str) -> SagaStatus:
        """The saga must roll back: say why, and let compensation take over."""
        self.ledger.set_saga_status(self.lease, SagaStatus.COMPENSATING, error=error)
        return SagaStatus.COMPENSATING

    def fail_forward(self, name: str, error: str) -> SagaStatus:
        """Past the pivot and still failing: stop in ``failed`` for an operator (`sagas resume`)."""
        self.ledger.set_saga_status(
            self.lease,
            SagaStatus.FAILED,
            error=f"step {name} failed after the point of no return: {error}"[:4000],
        )
        return SagaStatus.FAILED

    def pause(self, seconds: float) -> None:
        """A retry's wait, stopped at once (LeaseLostError) when the lease is lost."""
        remaining = seconds
        while remaining > 0:
            self.check_lease("while waiting to try again")
            slice_ = min(remaining, CANCEL_CHECK_SECONDS)
            self.services.sleep(slice_)
            remaining -= slice_
        self.check_lease("while waiting to try again")

    def context(
        self,
        saga: SagaRun,
        idx: int,
        step: StepDefinition,
        row: StepResult,
        outputs: Mapping[str, Mapping[str, Any]],
        *,
        cancellable: bool,
        timeout: float | None,
    ) -> StepContext:
        ledger, lease = self.ledger, self.lease

        def record_progress(patch: Mapping[str, Any], writing: bool | None) -> None:
            ledger.record_step_progress(lease, idx, patch, writing=writing)

        def cancel_requested() -> bool:
            self.check_lease(f"during {step.name}")  # fencing reaches the provider too
            if not cancellable:
                return False
            try:
                return ledger.is_cancel_requested(saga.id)
            except LedgerUnavailableError as exc:
                # A blip: the cancel is read again at the next poll; a ledger gone for longer than
                # the lease stops the runner through the heartbeat, never through a rollback.
                _log.warning("could not read saga %s's cancel request (%s); going on", saga.id, exc)
                return False

        return StepContext(
            saga_id=saga.id,
            step_idx=idx,
            step_name=step.name,
            idempotency_key=row.idempotency_key or step.idempotency_key(self.key_scope(saga)),
            inputs=saga.inputs,
            outputs=dict(outputs),
            recorded=dict(row.output),
            started_at=row.started_at,
            attempt=row.attempts,
            services=self.services,
            record_progress=record_progress,
            cancel_requested=cancel_requested,
            deadline=None if timeout is None else self.services.monotonic() + timeout,
            timeout=timeout,
            wrote=row.write_started_at is not None,
        )
