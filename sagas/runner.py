"""The saga runner: replay -> execute -> compensate in reverse, driven only by the ledger.

Every entry point (a flow run, its failure/cancel hooks, ``sagas resume``, the recovery sweep)
calls ``Runner.advance`` with the saga id, and the ledger alone decides what happens next: a
completed step is replayed from its recorded output, an unfinished one runs again through its
own check-then-act, a saga that is compensating goes on compensating. Running it twice is
therefore safe: the second caller either finds the saga busy (the lease) or finds less to do.

The point of no return is a pivot's *write*, not its completion: once a pivot's row says a write
may have been sent, nothing before it is compensated, a cancel only takes effect after it, and a
pivot in doubt is settled by ``sagas.point_of_no_return`` (looked up at the provider). A saga that
asks a person stops at ``sagas.approval_gate``; the rollback is ``sagas.compensation``. Retries:
one ``RetryPolicy`` per loop (the forward loop after a pivot, the compensation loop), bounded by
attempts and time, never retrying what the provider client already retried.

What this module must never do: run a step that is not in the catalog, write after its lease is
lost (every ledger write is fenced), hold a database transaction across a step, or start a
rollback because its own infrastructure (the ledger) failed: that stops the runner and leaves the
saga as it is, for a resume.

Why one file over 400 lines: the forward loop and its one step's try share one set of local facts
(past the pivot, the step prestarted with the previous one's completion, the cancel read by the last
write); the decisions it consults (the gate, the pivot's verdict, the rollback) live in their own
modules already.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from sagas.approval_gate import after_the_wait, at_the_gate, gate_index
from sagas.compensation import compensate
from sagas.digitalocean.ratelimit import Priority, request_priority
from sagas.errors import (
    DefinitionMismatchError,
    DestructiveCapError,
    IdempotencyConflictError,
    LeaseLostError,
    LedgerError,
    SagaCancelledError,
    SagaError,
    StepFailedError,
    StepTimeoutError,
    UnknownStepError,
)
from sagas.heartbeat import Heartbeat
from sagas.hold import SagaHold
from sagas.in_doubt import Found, Lookup, Verdict
from sagas.invocation import NOT_RETRIED, Invoke, Phase, describe, invoke_directly
from sagas.ledger.store import Ledger
from sagas.models import (
    ApprovalDecision,
    Lease,
    NextStep,
    SagaRun,
    SagaStatus,
    StepResult,
    StepStatus,
)
from sagas.point_of_no_return import is_pivot, pivot_began, pivot_started, settle_failed_pivot
from sagas.retry import RetryPolicy
from sagas.services import Services
from sagas.steps import Catalog, StepContext, StepDefinition
from sagas.telemetry import (
    FORWARD_RETRIES,
    LEASE_LOSSES,
    PROVIDER_WAIT,
    SAGAS_SETTLED,
    STEP_DURATION,
)
from sagas.timeline import provider_waits

_log = logging.getLogger("sagas.runner")
T = TypeVar("T")


class Ran(NamedTuple):
    """A step try that returned: its context, its output, and how long its execute took."""

    ctx: StepContext
    output: Mapping[str, Any]
    seconds: float


class Mode(StrEnum):
    FORWARD = "forward"  # run steps; stop once the saga must compensate (a flow hook takes over)
    ROLLBACK = "rollback"  # stop forward progress and compensate (failure/cancel hooks)
    FULL = "full"  # whatever the ledger says is next, to the end (resume, recovery)


def _forward_worth_retrying(exc: BaseException) -> bool:
    # After the pivot a step must eventually succeed: a timeout is one more failure to retry.
    return not isinstance(exc, NOT_RETRIED)


def _priority_of(saga: SagaRun) -> Priority:
    """Whose requests these are, for the shared rate budget: scheduled work (the nightly fleet)
    waits behind what a person started; compensations go first (``sagas.compensation``)."""
    return Priority.SCHEDULED if saga.triggered_by.startswith("schedule:") else Priority.INTERACTIVE


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

        Raises SagaBusyError (writing nothing) when another runner holds it; DestructiveCapError
        when a destructive saga would start while too many run (it records why it waits, and
        nothing else); LeaseLostError or a LedgerError when this runner had to stop (the saga is
        left for a resume).
        """
        lease, saga = self.ledger.claim_saga(saga_id, self.services.settings.lease_seconds)
        heartbeat = Heartbeat(self.ledger, lease, clock=self.services.monotonic)
        self.services.halt_on(heartbeat.lost)
        try:
            with heartbeat, request_priority(_priority_of(saga)):
                self._advance(SagaHold(self.ledger, self.services, lease, heartbeat), saga, mode, reason)
        except LeaseLostError:
            _log.error("lost the lease on saga %s; stopped without writing more", saga_id)
            LEASE_LOSSES.inc(kind=saga.kind)
            raise
        except BaseException:
            self._release_quietly(lease)
            raise
        finally:
            self.services.halt_on(None)
        released = self.ledger.release(lease)
        if released is None:
            return self.ledger.get_saga(saga_id)
        if released.status is not saga.status and (
            released.status.is_terminal or released.status.needs_operator
        ):
            SAGAS_SETTLED.inc(kind=released.kind, status=released.status.value)
        return released

    def _release_quietly(self, lease: Lease) -> None:
        """On the way out of an error: free the saga for recovery now rather than at lease expiry."""
        try:
            self.ledger.release(lease)
        except LedgerError as exc:
            _log.warning(
                "could not release saga %s (it frees itself at lease expiry): %s", lease.saga_id, exc
            )

    def _advance(self, hold: SagaHold, saga: SagaRun, mode: Mode, reason: str | None) -> None:
        lease = hold.lease
        try:
            try:
                self._check_definition(saga)
            except DefinitionMismatchError as exc:
                self.ledger.set_saga_status(lease, saga.status, error=str(exc))  # say so in the ledger
                raise
            status = saga.status
            if status.is_terminal:
                return
            if status is SagaStatus.AWAITING_APPROVAL and mode is not Mode.ROLLBACK:
                saga = after_the_wait(self.ledger, saga)
                if saga.approval_decision is None and not saga.cancel_requested:
                    return  # still waiting for a person: nothing to do
                status = SagaStatus.RUNNING  # decided (or cancelled): the forward loop acts on it
            if status in (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.AWAITING_APPROVAL):
                if mode is Mode.ROLLBACK and pivot_started(self.ledger, self.catalog, saga):
                    # No way back once a pivot may have written: a hook or a cancel only lets it
                    # finish forward (the saga keeps its cancel request, so it says so).
                    _log.warning("saga %s is past its point of no return: finishing it forward", saga.id)
                    self._run_forward(hold, saga)
                    return
                if mode is Mode.ROLLBACK:
                    hold.begin_rollback(reason or "rolled back on request")
                else:
                    saga = self._take_a_place(hold, saga)
                    status = self._run_forward(hold, saga)
                    if mode is Mode.FORWARD or status is not SagaStatus.COMPENSATING:
                        return
            elif status is SagaStatus.FAILED:
                # Past its pivot and stuck: an operator fixed the cause; retry forward.
                if mode is not Mode.FULL:
                    return
                self._run_forward(hold, saga)
                return
            elif status is SagaStatus.COMPENSATION_FAILED:
                if mode is Mode.FORWARD:
                    return
                self.ledger.set_saga_status(lease, SagaStatus.COMPENSATING, keep_error=True)
            elif status is SagaStatus.COMPENSATING and mode is Mode.FORWARD:
                return
            compensate(hold, self.catalog, self._invoke, self.ledger.get_saga(lease.saga_id))
        finally:
            hold.check_lease("while it ran")

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

    # -- the caps on destructive sagas ------------------------------------------------------

    def _take_a_place(self, hold: SagaHold, saga: SagaRun) -> SagaRun:
        """A destructive saga about to start, or to go on after its approval, first takes a place
        under the caps (``sagas.ledger.admission``); when they are full it writes why it waits and
        raises DestructiveCapError (the saga is released as it was, for its waiter to try again).
        A saga that will only roll back (cancelled, rejected) needs no place."""
        starting = saga.status is SagaStatus.PENDING or (
            saga.status is SagaStatus.AWAITING_APPROVAL
            and saga.approval_decision is ApprovalDecision.APPROVED
        )
        if not (saga.destructive and starting) or saga.admitted_at is not None or saga.cancel_requested:
            return saga
        admitted = self.ledger.admit(saga.id, self.services.settings.destructive_caps, lease=hold.lease)
        if admitted.admitted_at is None:
            _log.info("saga %s waits to start: %s", saga.id, admitted.waiting_reason)
            raise DestructiveCapError(
                admitted.waiting_reason or "the caps are full", saga_id=str(saga.id), recorded=True
            )
        return admitted

    # -- forward -----------------------------------------------------------------------------

    def _run_forward(self, hold: SagaHold, saga: SagaRun) -> SagaStatus:
        lease = hold.lease
        # Whether a cancel was requested, as of the runner's latest ledger write: every fenced
        # write reads it in the same statement, so a step boundary costs no extra query.
        cancel_requested = self.ledger.set_saga_status(lease, SagaStatus.RUNNING, keep_error=True)
        rows = (
            {}  # a pending saga never started a step: there is nothing to read
            if saga.status is SagaStatus.PENDING
            else {r.step_idx: r for r in self.ledger.list_step_results(saga.id)}
        )
        outputs: dict[str, Mapping[str, Any]] = {}
        gate = gate_index(self.catalog, saga)  # the step a person approves first, or -1
        past_pivot = False  # once a pivot may have written there is no way back: failures retry forward
        prestarted: StepResult | None = None  # recorded started with the previous step's completion
        finished = False
        for idx, name in enumerate(saga.step_names):
            step = self.catalog.step(name)
            pivot = is_pivot(self.catalog, saga, name)
            row = rows.get(idx)
            if row is not None and row.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
                outputs[name] = row.output  # resume, never redo
                past_pivot |= pivot and row.status is StepStatus.COMPLETED
                continue
            began = pivot and row is not None and pivot_began(row)
            if row is not None and row.status is StepStatus.FAILED and not (past_pivot or began):
                # Died between recording the failure and starting the rollback: roll back now.
                return hold.begin_rollback(row.error or f"step {name} failed")
            if not (past_pivot or began) and cancel_requested:
                return hold.begin_rollback(f"cancelled before step {name}")
            if idx == gate and not (past_pivot or began):
                waiting = at_the_gate(hold, saga, before=name)
                if waiting is not None:
                    return waiting
            key = step.idempotency_key(hold.key_scope(saga))
            if not step.applies(saga.inputs):
                why = step.skipped_because or "nothing to do for these inputs"
                self.ledger.record_step_skipped(lease, idx, name, key, why)
                outputs[name] = {"skipped": why}
                prestarted = None
                continue
            ran = self._execute_step(
                hold,
                saga,
                idx,
                step,
                key,
                outputs,
                after_pivot=past_pivot or began,
                prestarted=prestarted if prestarted is not None and prestarted.step_idx == idx else None,
            )
            prestarted = None
            if isinstance(ran, SagaStatus):
                return ran  # rolling back, or failed for an operator
            ctx, output, took = ran
            hold.check_lease(f"during {name}")
            result = {**ctx.notes, **output}
            outputs[name] = {**ctx.recorded, **result}
            past_pivot |= pivot
            last = idx == len(saga.step_names) - 1
            completion = self.ledger.record_step_completed(
                lease,
                idx,
                name,
                result,
                then_start=None
                if idx + 1 == gate
                else self._next_step(hold, saga, idx + 1, rows, past_pivot),
                finish=last,  # the last step's write also completes the saga...
                finish_unless_cancelled=not past_pivot,  # ...unless a cancel came while it ran
            )
            cancel_requested, prestarted = completion.cancel_requested, completion.next_started
            # Counted once the ledger says so, so the numbers agree with it.
            STEP_DURATION.observe(took, step=name, outcome="completed")
            for waited in provider_waits(result):
                PROVIDER_WAIT.observe(waited, step=name)
            if last and cancel_requested and not past_pivot:
                return hold.begin_rollback(f"cancelled during step {name}")
            finished = last
        if not finished:  # every step was already recorded (a resume), or the last one was skipped
            self.ledger.set_saga_status(lease, SagaStatus.COMPLETED)
        return SagaStatus.COMPLETED

    def _execute_step(
        self,
        hold: SagaHold,
        saga: SagaRun,
        idx: int,
        step: StepDefinition,
        key: str,
        outputs: Mapping[str, Mapping[str, Any]],
        *,
        after_pivot: bool,
        prestarted: StepResult | None,
    ) -> Ran | SagaStatus:
        """Run one step: once before the pivot (a failure rolls back, a pivot's is settled), or
        retried forward after it. Returns its context and output, or the saga's new status."""
        pivot = is_pivot(self.catalog, saga, step.name)
        lease = hold.lease
        tries: list[tuple[StepResult, StepContext]] = []

        def attempt() -> Ran:
            started = (
                prestarted
                if not tries and prestarted is not None
                else self.ledger.record_step_started(lease, idx, step.name, key)
            )
            ctx = hold.context(
                saga,
                idx,
                step,
                started,
                outputs,
                # A pivot, once started, is never interrupted by a cancel: the cancel takes effect
                # after it. After the pivot nothing is cancellable: the saga finishes forward.
                cancellable=not (after_pivot or pivot),
                timeout=hold.timeout(saga, step),
            )
            tries.append((started, ctx))
            began = self.services.monotonic()
            try:
                output = self._invoke(step, Phase.EXECUTE, step.execute, ctx)
            except (LeaseLostError, LedgerError):
                raise
            except Exception as exc:
                took = self.services.monotonic() - began
                error = describe(exc)
                _log.warning("step %s of saga %s failed (try %d): %s", step.name, saga.id, len(tries), error)
                self.ledger.record_step_failed(lease, idx, error)
                STEP_DURATION.observe(took, step=step.name, outcome="failed")
                raise
            return Ran(ctx, output or {}, self.services.monotonic() - began)

        def retrying(exc: BaseException, failures: int, delay: float) -> None:
            FORWARD_RETRIES.inc(step=step.name)

        if after_pivot:
            try:
                return self._forward_policy(hold).run(attempt, on_retry=retrying)
            except (LeaseLostError, LedgerError):
                raise
            except Exception as exc:
                return hold.fail_forward(step.name, describe(exc))
        try:
            return attempt()
        except (LeaseLostError, LedgerError):
            raise
        except IdempotencyConflictError as exc:
            return hold.begin_rollback(describe(exc))
        except Exception as exc:
            if pivot and tries:
                row, ctx = tries[-1]
                settled = settle_failed_pivot(hold, saga, idx, step, outputs, row, ctx, exc)
                if settled.verdict is Verdict.FORWARD:
                    return self._execute_step(
                        hold, saga, idx, step, key, outputs, after_pivot=True, prestarted=None
                    )
                if settled.verdict is Verdict.ROLL_BACK:
                    return hold.begin_rollback(settled.why)
                return hold.fail_forward(step.name, settled.why)
            error = describe(exc)
            if isinstance(exc, StepTimeoutError):
                # In doubt: its undo (which finds the resource by its key first) settles it.
                self.ledger.record_step_progress(
                    lease,
                    idx,
                    {
                        "in_doubt": Lookup(Found.UNKNOWN, "left to its undo, which looks it up first").record(
                            error
                        )
                    },
                )
            if not isinstance(exc, StepFailedError | SagaCancelledError):
                error = f"step {step.name} failed: {error}"
            return hold.begin_rollback(error)

    def _next_step(
        self, hold: SagaHold, saga: SagaRun, idx: int, rows: Mapping[int, StepResult], past_pivot: bool
    ) -> NextStep | None:
        """The next step, to record started in the same write as this one's completion: only a
        step with no ledger row yet (a recorded one goes through the loop's checks)."""
        if idx >= len(saga.step_names) or idx in rows:
            return None
        step = self.catalog.step(saga.step_names[idx])
        if not step.applies(saga.inputs):
            return None  # recorded skipped by the loop
        try:
            key = step.idempotency_key(hold.key_scope(saga))
        except Exception:
            return None  # the loop computes it again, and fails there, after this step is recorded
        return NextStep(idx=idx, name=step.name, idempotency_key=key, unless_cancelled=not past_pivot)

    def _forward_policy(self, hold: SagaHold) -> RetryPolicy:
        settings = self.services.settings
        return RetryPolicy(
            on=_forward_worth_retrying,
            attempts=settings.forward_attempts,
            deadline=None,  # each try has its step's deadline
            base_delay=settings.compensation_backoff_seconds,
            max_delay=60.0,
            sleep=hold.pause,
            clock=self.services.monotonic,
        )
