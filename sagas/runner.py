"""The saga runner: replay -> execute -> compensate in reverse, driven only by the ledger.

Every entry point (a flow run, its failure/cancel hooks, ``sagas resume``, the recovery sweep)
calls ``Runner.advance`` with the saga id, and the ledger alone decides what happens next: a
completed step is replayed from its recorded output, an unfinished one runs again through its
own check-then-act, a saga that is compensating goes on compensating. Running it twice is
therefore safe: the second caller either finds the saga busy (the lease) or finds less to do.

What this module must never do: run a step that is not in the catalog, write after its lease is
lost (every ledger write is fenced), or hold a database transaction across a step.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from sagas.errors import (
    DefinitionMismatchError,
    IdempotencyConflictError,
    LeaseLostError,
    LedgerError,
    SagaCancelledError,
    SagaError,
    StepFailedError,
    UnknownStepError,
)
from sagas.ledger.store import Ledger
from sagas.models import Lease, NextStep, Reversibility, SagaRun, SagaStatus, StepResult, StepStatus
from sagas.services import Services
from sagas.steps import Catalog, KeyScope, StepContext, StepDefinition

_log = logging.getLogger("sagas.runner")
T = TypeVar("T")


class Phase(StrEnum):
    EXECUTE = "execute"
    COMPENSATE = "compensate"


class Mode(StrEnum):
    FORWARD = "forward"  # run steps; stop once the saga must compensate (a flow hook takes over)
    ROLLBACK = "rollback"  # stop forward progress and compensate (failure/cancel hooks)
    FULL = "full"  # whatever the ledger says is next, to the end (resume, recovery)


Invoke = Callable[[StepDefinition, Phase, Callable[[StepContext], T], StepContext], T]


def invoke_directly(
    step: StepDefinition, phase: Phase, fn: Callable[[StepContext], T], ctx: StepContext
) -> T:
    return fn(ctx)


def describe(exc: BaseException) -> str:
    """An error's text for the ledger: type and message, bounded. Never a traceback with locals."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, SagaError):
        text = f"{type(exc).__name__}: {text}"
    return text[:2000]


class _Heartbeat:
    """Renews the lease while a step waits on a slow provider; notices when it was lost."""

    def __init__(self, ledger: Ledger, lease: Lease) -> None:
        self._ledger = ledger
        self._lease = lease
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{lease.saga_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = max(self._lease.seconds / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                if not self._ledger.renew(self._lease):
                    self.lost.set()
                    return
            except Exception as exc:  # a blip: the next beat tries again before expiry
                _log.warning("could not renew the lease on saga %s: %s", self._lease.saga_id, describe(exc))


class Runner:
    def __init__(
        self,
        ledger: Ledger,
        catalog: Catalog,
        services: Services,
        invoke: Invoke[Any] = invoke_directly,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.services = services
        self._invoke = invoke

    # -- entry point -------------------------------------------------------------------------

    def advance(self, saga_id: uuid.UUID, mode: Mode = Mode.FULL, *, reason: str | None = None) -> SagaRun:
        """Claim the saga, do what its ledger says is next (within ``mode``), release it.

        Raises SagaBusyError (writing nothing) when another runner holds it.
        """
        lease, saga = self.ledger.claim_saga(saga_id, self.services.settings.lease_seconds)
        try:
            with _Heartbeat(self.ledger, lease) as heartbeat:
                self._advance(lease, saga, mode, reason, heartbeat)
        except LeaseLostError:
            _log.error("lost the lease on saga %s; stopped without writing more", saga_id)
            raise
        except BaseException:
            self._release_quietly(lease)
            raise
        released = self.ledger.release(lease)
        return released if released is not None else self.ledger.get_saga(saga_id)

    def _release_quietly(self, lease: Lease) -> None:
        """On the way out of an error: free the saga for recovery now rather than at lease expiry."""
        try:
            self.ledger.release(lease)
        except LedgerError as exc:
            _log.warning(
                "could not release saga %s (it frees itself at lease expiry): %s", lease.saga_id, exc
            )

    def _advance(
        self, lease: Lease, saga: SagaRun, mode: Mode, reason: str | None, heartbeat: _Heartbeat
    ) -> None:
        try:
            try:
                self._check_definition(saga)
            except DefinitionMismatchError as exc:
                self.ledger.set_saga_status(lease, saga.status, error=str(exc))  # say so in the ledger
                raise
            status = saga.status
            if status.is_terminal:
                return
            if status in (SagaStatus.PENDING, SagaStatus.RUNNING):
                if mode is Mode.ROLLBACK and self._past_pivot(saga):
                    # No way back past a pivot: a hook or a cancel can only let it finish forward.
                    _log.warning("saga %s is past its point of no return: finishing it forward", saga.id)
                    self._run_forward(lease, saga, heartbeat)
                    return
                if mode is Mode.ROLLBACK:
                    self.ledger.set_saga_status(
                        lease, SagaStatus.COMPENSATING, error=reason or "rolled back on request"
                    )
                else:
                    status = self._run_forward(lease, saga, heartbeat)
                    if mode is Mode.FORWARD or status is not SagaStatus.COMPENSATING:
                        return
            elif status is SagaStatus.FAILED:
                # Past its pivot and stuck: an operator fixed the cause; retry forward.
                if mode is not Mode.FULL:
                    return
                self._run_forward(lease, saga, heartbeat)
                return
            elif status is SagaStatus.COMPENSATION_FAILED:
                if mode is Mode.FORWARD:
                    return
                self.ledger.set_saga_status(lease, SagaStatus.COMPENSATING, keep_error=True)
            elif status is SagaStatus.COMPENSATING and mode is Mode.FORWARD:
                return
            self._compensate(lease, self.ledger.get_saga(lease.saga_id), heartbeat)
        finally:
            if heartbeat.lost.is_set():
                raise LeaseLostError(f"the lease on saga {lease.saga_id} was lost while it ran")

    def _past_pivot(self, saga: SagaRun) -> bool:
        return any(
            row.status is StepStatus.COMPLETED
            and self.catalog.step(row.step_name).reversibility_for(saga.inputs) is Reversibility.PIVOT
            for row in self.ledger.list_step_results(saga.id)
        )

    def _check_definition(self, saga: SagaRun) -> None:
        """Rule 7: a saga runs the steps it was started with, or not at all."""
        try:
            kind = self.catalog.kind(saga.kind)
            for name in saga.step_names:
                self.catalog.step(name)
        except (UnknownStepError, SagaError) as exc:
            raise DefinitionMismatchError(
                f"saga {saga.id} was started with a definition this code no longer has ({exc});"
                " deploy the code it was started with, or resolve it by hand"
            ) from exc
        pinned = kind.steps is None or tuple(kind.steps) == saga.step_names
        if saga.definition_version != kind.version or not pinned:
            raise DefinitionMismatchError(
                f"saga {saga.id} was started as {saga.kind} v{saga.definition_version}"
                f" ({', '.join(saga.step_names)}) but this code defines v{kind.version}"
                f" ({', '.join(kind.steps or saga.step_names)}): deploy the matching code to finish it"
            )

    # -- forward -----------------------------------------------------------------------------

    def _run_forward(self, lease: Lease, saga: SagaRun, heartbeat: _Heartbeat) -> SagaStatus:
        # Whether a cancel was requested, as of the runner's latest ledger write: every fenced
        # write reads it in the same statement, so a step boundary costs no extra query.
        cancel_requested = self.ledger.set_saga_status(lease, SagaStatus.RUNNING, keep_error=True)
        rows = (
            {}  # a pending saga never started a step: there is nothing to read
            if saga.status is SagaStatus.PENDING
            else {r.step_idx: r for r in self.ledger.list_step_results(saga.id)}
        )
        outputs: dict[str, Mapping[str, Any]] = {}
        past_pivot = False  # once a pivot completed there is no way back: failures retry forward
        prestarted: StepResult | None = None  # recorded started with the previous step's completion
        finished = False
        for idx, name in enumerate(saga.step_names):
            step = self.catalog.step(name)
            row = rows.get(idx)
            if row is not None and row.status is StepStatus.COMPLETED:
                outputs[name] = row.output  # resume, never redo
                past_pivot |= step.reversibility_for(saga.inputs) is Reversibility.PIVOT
                continue
            if row is not None and row.status is StepStatus.FAILED and not past_pivot:
                # Died between recording the failure and starting the rollback: roll back now.
                return self._begin_rollback(lease, row.error or f"step {name} failed")
            if not past_pivot and cancel_requested:
                return self._begin_rollback(lease, f"cancelled before step {name}")
            key = step.idempotency_key(self._key_scope(saga))
            attempt = 0
            while True:
                attempt += 1
                try:
                    if attempt == 1 and prestarted is not None and prestarted.step_idx == idx:
                        started = prestarted
                    else:
                        started = self.ledger.record_step_started(lease, idx, name, key)
                except IdempotencyConflictError as exc:
                    if past_pivot:
                        return self._fail_forward(lease, name, describe(exc))
                    return self._begin_rollback(lease, describe(exc))
                ctx = self._context(
                    lease, saga, idx, step, started, outputs, heartbeat, cancellable=not past_pivot
                )
                try:
                    output = self._invoke(step, Phase.EXECUTE, step.execute, ctx)
                except (LeaseLostError, LedgerError):
                    raise
                except Exception as exc:
                    error = describe(exc)
                    _log.warning("step %s of saga %s failed (attempt %d): %s", name, saga.id, attempt, error)
                    self.ledger.record_step_failed(lease, idx, error)
                    if past_pivot:
                        if attempt < self.services.settings.forward_attempts:
                            self.services.sleep(self._forward_backoff(attempt))
                            continue
                        return self._fail_forward(lease, name, error)
                    if not isinstance(exc, StepFailedError | SagaCancelledError):
                        error = f"step {name} failed: {error}"
                    return self._begin_rollback(lease, error)
                break
            if heartbeat.lost.is_set():
                raise LeaseLostError(f"the lease on saga {saga.id} was lost during {name}")
            result = {**ctx.notes, **(output or {})}
            outputs[name] = {**ctx.recorded, **result}
            past_pivot |= step.reversibility_for(saga.inputs) is Reversibility.PIVOT
            last = idx == len(saga.step_names) - 1
            completion = self.ledger.record_step_completed(
                lease,
                idx,
                name,
                result,
                then_start=self._next_step(saga, idx + 1, rows, past_pivot),
                finish=last,  # the last step's write also completes the saga
            )
            cancel_requested, prestarted = completion.cancel_requested, completion.next_started
            finished = last
        if not finished:  # every step was already recorded completed (a resume)
            self.ledger.set_saga_status(lease, SagaStatus.COMPLETED)
        return SagaStatus.COMPLETED

    def _next_step(
        self, saga: SagaRun, idx: int, rows: Mapping[int, StepResult], past_pivot: bool
    ) -> NextStep | None:
        """The next step, to record started in the same write as this one's completion: only a
        step with no ledger row yet (a recorded one goes through the loop's checks)."""
        if idx >= len(saga.step_names) or idx in rows:
            return None
        step = self.catalog.step(saga.step_names[idx])
        try:
            key = step.idempotency_key(self._key_scope(saga))
        except Exception:
            return None  # the loop computes it again, and fails there, after this step is recorded
        return NextStep(idx=idx, name=step.name, idempotency_key=key, unless_cancelled=not past_pivot)

    def _forward_backoff(self, attempt: int) -> float:
        settings = self.services.settings
        return float(min(settings.compensation_backoff_seconds * 2 ** (attempt - 1), 60.0))

    def _fail_forward(self, lease: Lease, name: str, error: str) -> SagaStatus:
        """Past the pivot, retries ran out: stop in ``failed`` for an operator (`sagas resume`)."""
        self.ledger.set_saga_status(
            lease,
            SagaStatus.FAILED,
            error=f"step {name} failed after the point of no return (retried forward): {error}",
        )
        return SagaStatus.FAILED

    def _begin_rollback(self, lease: Lease, error: str) -> SagaStatus:
        self.ledger.set_saga_status(lease, SagaStatus.COMPENSATING, error=error)
        return SagaStatus.COMPENSATING

    # -- backward ----------------------------------------------------------------------------

    def _compensate(self, lease: Lease, saga: SagaRun, heartbeat: _Heartbeat) -> None:
        """Undo, in reverse, every step that completed and the one that failed or is in doubt."""
        rows = {r.step_idx: r for r in self.ledger.list_step_results(saga.id)}
        outputs = {r.step_name: r.output for r in rows.values()}
        settings = self.services.settings
        for idx in sorted(rows, reverse=True):
            row = rows[idx]
            if row.status in (StepStatus.PENDING, StepStatus.SKIPPED, StepStatus.COMPENSATED):
                continue
            step = self.catalog.step(row.step_name)
            last_error = ""
            for attempt in range(settings.compensation_attempts):
                if attempt:
                    self.services.sleep(min(settings.compensation_backoff_seconds * 2 ** (attempt - 1), 60))
                self.ledger.record_step_compensating(lease, idx)
                ctx = self._context(lease, saga, idx, step, row, outputs, heartbeat, cancellable=False)
                try:
                    # A 404 on the resource itself is success, and each step says so where it
                    # knows which 404 that is; a 404 on anything else is a failed undo.
                    self._invoke(step, Phase.COMPENSATE, step.compensate, ctx)
                except (LeaseLostError, LedgerError):
                    raise
                except Exception as exc:
                    last_error = describe(exc)
                    _log.warning(
                        "compensation of %s (saga %s) failed, attempt %d/%d: %s",
                        row.step_name,
                        saga.id,
                        attempt + 1,
                        settings.compensation_attempts,
                        last_error,
                    )
                    continue
                break
            else:
                self.ledger.record_step_compensation_failed(lease, idx, last_error)
                earlier = f"{saga.error}; then " if saga.error else ""
                self.ledger.set_saga_status(
                    lease,
                    SagaStatus.COMPENSATION_FAILED,
                    error=f"{earlier}compensation of {row.step_name} failed: {last_error}"[:4000],
                )
                return
            if heartbeat.lost.is_set():
                raise LeaseLostError(f"the lease on saga {saga.id} was lost compensating {row.step_name}")
            # The step that failed keeps saying so once its undo ran (the seed's ledger reads
            # "fail: failed"); compensated_at records that the undo happened.
            final = StepStatus.FAILED if row.status is StepStatus.FAILED else StepStatus.COMPENSATED
            self.ledger.record_step_compensated(lease, idx, final)
        self.ledger.set_saga_status(lease, SagaStatus.ROLLED_BACK, keep_error=True)

    # -- helpers -----------------------------------------------------------------------------

    def _key_scope(self, saga: SagaRun) -> KeyScope:
        return KeyScope(saga_id=saga.id, inputs=saga.inputs, prefix=self.services.settings.name_prefix)

    def _context(
        self,
        lease: Lease,
        saga: SagaRun,
        idx: int,
        step: StepDefinition,
        row: StepResult,
        outputs: Mapping[str, Mapping[str, Any]],
        heartbeat: _Heartbeat,
        *,
        cancellable: bool = True,
    ) -> StepContext:
        def record_progress(patch: Mapping[str, Any]) -> None:
            self.ledger.record_step_progress(lease, idx, patch)

        def cancel_requested() -> bool:
            if heartbeat.lost.is_set():  # fencing reaches the provider too: stop at the next poll
                raise LeaseLostError(f"the lease on saga {saga.id} was lost during {step.name}")
            return cancellable and self.ledger.is_cancel_requested(saga.id)

        return StepContext(
            saga_id=saga.id,
            step_idx=idx,
            step_name=step.name,
            idempotency_key=row.idempotency_key or step.idempotency_key(self._key_scope(saga)),
            inputs=saga.inputs,
            outputs=dict(outputs),
            recorded=dict(row.output),
            started_at=row.started_at,
            attempt=row.attempts,
            services=self.services,
            record_progress=record_progress,
            cancel_requested=cancel_requested,
        )
