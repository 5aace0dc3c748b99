"""Compensation: undo, in reverse, every step that completed and the one that failed or is in doubt.

DESIGN rule 4, kept here in one loop:

- a row already undone (``compensated_at``) is never undone again: a resumed rollback goes on
  where it stopped;
- a row whose ``write_started_at`` is empty never sent anything: it has nothing to undo and the
  provider is not asked (a provider down before the first write cannot block a rollback);
- each undo has one ``RetryPolicy``, which does not retry what the provider client already retried,
  and the whole rollback has one deadline (``compensation_deadline_seconds``); past either, the
  saga stops in ``compensation_failed`` with the last error, for an operator.
"""

from __future__ import annotations

import logging
from typing import Any

from sagas.digitalocean.ratelimit import Priority, request_priority
from sagas.errors import LeaseLostError, LedgerError, StepTimeoutError
from sagas.hold import SagaHold
from sagas.invocation import NOT_RETRIED, Invoke, Phase, describe
from sagas.models import SagaRun, SagaStatus, StepResult, StepStatus
from sagas.retry import RetryPolicy
from sagas.steps import Catalog, StepDefinition
from sagas.telemetry import COMPENSATION_FAILURES

_log = logging.getLogger("sagas.runner")


def compensate(hold: SagaHold, catalog: Catalog, invoke: Invoke[Any], saga: SagaRun) -> None:
    """Roll the saga back as far as its ledger says is left; ends ``rolled_back`` or
    ``compensation_failed``. ``invoke`` runs a step's function (as a Prefect task, in flows).
    Its provider requests go first in the shared rate budget: an undo must not wait behind a fleet."""
    with request_priority(Priority.COMPENSATION):
        _compensate(hold, catalog, invoke, saga)


def _compensate(hold: SagaHold, catalog: Catalog, invoke: Invoke[Any], saga: SagaRun) -> None:
    ledger, lease, services = hold.ledger, hold.lease, hold.services
    rows = {r.step_idx: r for r in ledger.list_step_results(saga.id)}
    outputs = {r.step_name: r.output for r in rows.values()}
    settings = services.settings
    clock = services.monotonic
    deadline = clock() + settings.compensation_deadline_seconds
    for idx in sorted(rows, reverse=True):
        row = rows[idx]
        if row.status in (StepStatus.PENDING, StepStatus.SKIPPED) or row.compensated_at is not None:
            continue
        # The step that failed keeps saying so once its undo ran (the seed's ledger reads
        # "fail: failed"); compensated_at records that the undo happened.
        final = StepStatus.FAILED if row.status is StepStatus.FAILED else StepStatus.COMPENSATED
        if row.write_started_at is None:
            ledger.record_step_compensated(lease, idx, final)  # nothing was ever sent
            continue
        step = catalog.step(row.step_name)

        def undo(step: StepDefinition = step, row: StepResult = row, idx: int = idx) -> None:
            if clock() >= deadline:
                raise StepTimeoutError(f"the rollback ({step.name})", settings.compensation_deadline_seconds)
            ledger.record_step_compensating(lease, idx)
            ctx = hold.context(
                saga, idx, step, row, outputs, cancellable=False, timeout=max(deadline - clock(), 0.0)
            )
            invoke(step, Phase.COMPENSATE, step.compensate, ctx)

        def retrying(exc: BaseException, failed: int, delay: float, name: str = row.step_name) -> None:
            _log.warning(
                "compensation of %s (saga %s) failed, try %d: %s; again in %.1fs",
                name,
                saga.id,
                failed,
                describe(exc),
                delay,
            )

        policy = RetryPolicy(
            on=lambda exc: not isinstance(exc, (*NOT_RETRIED, StepTimeoutError)),
            attempts=settings.compensation_attempts,
            deadline=max(deadline - clock(), 0.0),
            base_delay=settings.compensation_backoff_seconds,
            max_delay=60.0,
            sleep=hold.pause,
            clock=clock,
        )
        try:
            policy.run(undo, on_retry=retrying)
        except (LeaseLostError, LedgerError):
            raise
        except Exception as exc:
            last_error = describe(exc)
            _log.error("compensation of %s (saga %s) gave up: %s", row.step_name, saga.id, last_error)
            ledger.record_step_compensation_failed(lease, idx, last_error)
            COMPENSATION_FAILURES.inc(step=row.step_name)
            earlier = f"{saga.error}; then " if saga.error else ""
            ledger.set_saga_status(
                lease,
                SagaStatus.COMPENSATION_FAILED,
                error=f"{earlier}compensation of {row.step_name} failed: {last_error}"[:4000],
            )
            return
        hold.check_lease(f"compensating {row.step_name}")
        ledger.record_step_compensated(lease, idx, final)
    ledger.set_saga_status(lease, SagaStatus.ROLLED_BACK, keep_error=True)
