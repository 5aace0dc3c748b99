"""The body every saga flow shares: find or record its saga, drive it to its end in this flow run
(or follow the run that drives it), and end the run with the saga's real outcome.

- **Forward, then back, in this run.** The saga runs forward; when it must roll back (a failure,
  a cancel before a pivot) the rollback runs right here too, so its compensations are this run's
  own task runs, and the run's final state says how the saga ended: ``Completed('... completed:
  ...')``, or ``Failed('... rolled back: 1 step undone, nothing left (...)')``,
  ``Failed('... compensation_failed ...')``, ``Failed('... failed past its point of no return')``.
- **A cancel on a worker** arrives as ``TerminationSignal``. Inside a step, the step is waited for
  and a cancel is recorded (``tasks.prefect_steps.when_terminated``); anywhere else the runner
  stopped and the cancel is recorded here. Either way the saga is rolled back (or, past its point
  of no return, finished forward) in this process within Prefect's grace, and the body returns:
  the worker then marks the run ``Cancelled`` (``flows.hooks`` takes over if the process dies).
- **A second submission** of a saga another run is driving (same ``saga_id``) follows that saga to
  its end and completes, naming the run that drove it: a harmless duplicate is not an outage.
- **Prefect's Retry** (the same flow run, run again) never starts a stranger: the saga linked to
  the run is resumed (``failed``: forward; ``compensation_failed``: its rollback; unfinished: from
  where it stands); after a ``rolled_back`` saga, a new saga is started in its place, linked to it
  (``retry_of``) and named in the logs; a completed or resolved saga is left as it is.
- **Too many destructive sagas at once** (``SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT`` /
  ``_PER_DEPLOYMENT``): the run records its saga waiting, with the reason (the ledger, ``sagas
  show``, the saga's card and a warning in the run's logs say why), and starts it when a place
  frees; the same after a person approves a saga that must take a place again. A cancel
  meanwhile rolls it back (nothing ran).
- **This process losing its ledger** (the database, or the lease) is not the saga failing: the run
  fails saying so, and no hook rolls the saga back; the recovery sweep resumes it.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.wiring import App, build_app
from flows.approval import in_a_deployment, suspend_for_approval, waiting_for_a_person
from flows.runbook import RUNBOOK
from flows.visibility import publish
from sagas.errors import (
    DestructiveCapError,
    InputError,
    LeaseLostError,
    LedgerError,
    ResourceBusyError,
    SagaBusyError,
)
from sagas.ledger.store import Ledger
from sagas.models import Admission, SagaRun, SagaStatus
from sagas.outcome import outcome_line
from sagas.runner import Mode, Runner

_RETRIES = uuid.UUID("6f0f3d1c-8a5e-4f5e-9a51-2b7c0d4e8a10")
FOLLOW_POLL_SECONDS = 1.0
ADMISSION_POLL_SECONDS = 2.0  # how often a run waiting for a place under the destructive caps asks


def run_saga_flow(
    kind: str,
    inputs: dict[str, Any],
    *,
    steps: list[str] | None,
    saga_id: uuid.UUID | None,
    triggered_by: str,
    deployment_id: str | None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Returns the flow run's final state: Completed or Failed, with the saga's outcome as its message."""
    from prefect import get_run_logger
    from prefect.runtime import flow_run
    from prefect.states import Completed, Failed

    log = get_run_logger()
    app = build_app()
    run_id = str(flow_run.id or "")
    try:
        saga, first = _the_saga(
            app, log, kind, inputs, steps, saga_id, triggered_by, deployment_id, run_id, options or {}
        )
    except (InputError, ResourceBusyError):
        RUNBOOK.turned_away(run_id)  # this run drove nothing: its hooks must not touch any saga
        raise
    # A saga linked to another flow run is that run's: this one is a second submission and follows.
    driver = saga.flow_run_id if run_id and saga.flow_run_id not in (None, uuid.UUID(run_id)) else None
    if driver is None:
        RUNBOOK.drove(run_id, saga.id)
    else:
        RUNBOOK.turned_away(run_id)
    try:
        if driver is None and waiting_for_a_person(saga):
            suspend_for_approval(app, saga, log)  # a run resumed with the answer records it here
        while True:
            driven = _drive(app, log, saga, first, following=driver)
            final, followed = driven.saga, driven.followed
            if followed is not None or driven.cancelled or not waiting_for_a_person(final):
                break
            # Stopped for a person: say so, show the plan, and let go of the worker.
            log.info(outcome_line(final, app.ledger.list_step_results(final.id)))
            publish(app.ledger, final)
            if not in_a_deployment():
                return Completed(message=outcome_line(final, app.ledger.list_step_results(final.id)))
            suspend_for_approval(app, final, log)  # suspends (exits) unless its deadline passed
            first = Mode.FORWARD
    except (LedgerError, LeaseLostError) as exc:
        RUNBOOK.lost_ledger(run_id)
        message = (
            f"{kind} saga {saga.id}: this process lost its ledger ({exc}); the saga was left as it"
            f" stands, for the recovery sweep or `sagas resume {saga.id}`"
        )
        log.error(message)
        return Failed(message=message)
    steps_now = app.ledger.list_step_results(final.id)
    line = outcome_line(final, steps_now)
    if followed is not None:
        line += f" (driven by flow run {followed}: this run was a second submission and followed it)"
    log.info(line)
    if driven.cancelled:
        # Cancelled on a worker: let the engine end the run as the cancel it is (the worker marks
        # it Cancelled; its hook says the outcome last). Returning a state instead would make the
        # engine read a result from a run still Cancelling, and log that as an error.
        from prefect.exceptions import TerminationSignal

        publish(app.ledger, final)
        raise TerminationSignal(signal=15)
    _publish_while_prefect_finishes(run_id, app.ledger, final)
    if final.status is SagaStatus.COMPLETED or followed is not None:
        return Completed(message=line, data=summary(final))
    return Failed(message=line)


def summary(saga: SagaRun) -> dict[str, Any]:
    return {"saga_id": str(saga.id), "kind": saga.kind, "status": saga.status.value, "context": saga.context}


def _the_saga(
    app: App,
    log: Any,
    kind: str,
    inputs: dict[str, Any],
    steps: list[str] | None,
    saga_id: uuid.UUID | None,
    triggered_by: str,
    deployment_id: str | None,
    run_id: str,
    options: dict[str, Any],
) -> tuple[SagaRun, Mode]:
    """The saga this run drives and the mode to drive it in (see the module docstring on Retry)."""
    from prefect.runtime import flow_run

    run_uuid = uuid.UUID(run_id) if run_id else None
    linked = app.ledger.find_saga_by_flow_run(run_uuid) if run_uuid is not None else None
    retrying = int(flow_run.run_count or 1) > 1
    create = dict(
        steps=steps,
        triggered_by=triggered_by,
        deployment_id=deployment_id,
        flow_run_id=run_uuid,
        options=options,
    )
    if linked is None:
        return (
            app.provisioning().create_saga(kind, inputs, saga_id=saga_id, admission=Admission.WAIT, **create),  # type: ignore[arg-type]
            Mode.FORWARD,
        )
    if linked.status is SagaStatus.ROLLED_BACK and retrying:
        new_id = uuid.uuid5(_RETRIES, f"{linked.id}:{flow_run.run_count}")
        log.info(f"saga {linked.id} rolled back; this retry starts saga {new_id} in its place")
        again = app.provisioning().create_saga(
            linked.kind,
            linked.inputs,
            saga_id=new_id,
            retry_of=linked.id,
            admission=Admission.WAIT,
            **{**create, "steps": list(linked.step_names), "options": linked.options},  # type: ignore[arg-type]
        )
        return again, Mode.FORWARD
    if retrying:
        log.info(f"retrying this flow run resumes saga {linked.id}, which is {linked.status.value}")
    if linked.status is SagaStatus.COMPENSATION_FAILED:
        return linked, Mode.ROLLBACK
    return linked, Mode.FULL if linked.status is SagaStatus.FAILED else Mode.FORWARD


@dataclass
class Driven:
    """How driving a saga in this run ended."""

    saga: SagaRun
    followed: uuid.UUID | None = None  # the flow run that drove it, when this one only followed
    cancelled: bool = False  # this run's process was told to stop (a cancel on a worker)


def _drive(app: App, log: Any, saga: SagaRun, first: Mode, *, following: uuid.UUID | None) -> Driven:
    """Drive the saga to a settled status here; or, while another run drives it, follow it."""
    from prefect.exceptions import TerminationSignal

    from tasks.prefect_steps import invoke_as_task, when_terminated

    told: list[bool] = []

    def cancelled_here() -> None:
        told.append(True)
        log.warning(f"flow run cancelled: saga {saga.id} is asked to stop at its next safe point")
        app.ledger.request_cancel(saga.id)

    runner = app.runner(invoke_as_task)
    waiting_since: float | None = None  # for a place under the caps on destructive sagas
    try:
        while True:
            current = app.ledger.get_saga(saga.id)
            if following is not None and (
                current.status.is_terminal
                or current.status.needs_operator
                or current.status is SagaStatus.AWAITING_APPROVAL
            ):
                return Driven(
                    current, following
                )  # settled, or waiting for a person: nothing to hold a worker for
            try:
                if waiting_since is not None:
                    time.sleep(ADMISSION_POLL_SECONDS)  # here, so that a cancel meanwhile rolls it back
                with when_terminated(cancelled_here):
                    result = runner.advance(saga.id, first)
                    if waiting_since is not None:
                        log.info(
                            f"saga {saga.id} started after waiting {time.monotonic() - waiting_since:.0f}s"
                        )
                        waiting_since = None
                    if result.status is SagaStatus.COMPENSATING:
                        result = runner.advance(saga.id, Mode.ROLLBACK, reason=result.error)
                return Driven(result, following, cancelled=bool(told))
            except SagaBusyError as exc:
                if following is None:
                    following = current.flow_run_id or uuid.UUID(int=0)
                    log.info(f"saga {saga.id} is driven by flow run {following}: following it to its end")
                time.sleep(min(FOLLOW_POLL_SECONDS, max(exc.lease_expires_in or FOLLOW_POLL_SECONDS, 0.1)))
            except DestructiveCapError as exc:
                if waiting_since is None:
                    # Said once, in the logs and on the saga's card: the ledger has the reason too.
                    waiting_since = time.monotonic()
                    log.warning(f"saga {saga.id} waits to start: {exc.reason}")
                    publish(app.ledger, app.ledger.get_saga(saga.id))
            except TerminationSignal:
                if following is not None:
                    raise  # a follower cancelled stops following: the saga is its driver's
                # Cut off outside a step (the runner stopped and released the saga): roll back here.
                cancelled_here()
                return Driven(_roll_back_after_a_cancel(runner, saga), None, cancelled=True)
    finally:
        runner.services.close()


def _roll_back_after_a_cancel(runner: Runner, saga: SagaRun) -> SagaRun:
    """Roll back (or, past the pivot, finish forward) after a cancel; a second signal changes nothing."""
    from tasks.prefect_steps import when_terminated

    with when_terminated(lambda: None):
        return runner.advance(saga.id, Mode.ROLLBACK, reason="flow run cancelled")


def _publish_while_prefect_finishes(run_id: str, ledger: Ledger, saga: SagaRun) -> None:
    """Publish the saga's artifacts and event alongside Prefect's own end of the run.

    Once the body returns, Prefect stores the result and proposes the final state, a round trip
    to a server that is often still busy with the run's task events; the artifacts need the same
    server. The publishing thread runs meanwhile, and every flow hook waits for it first
    (``RUNBOOK.finish_publishing``), so the run ends with its artifacts in place and in order.
    """
    if not run_id:
        publish(ledger, saga)
        return
    context = contextvars.copy_context()  # the flow run's context: its client, its ids
    thread = threading.Thread(
        target=context.run, args=(publish, ledger, saga), name=f"publish-{saga.id}", daemon=False
    )
    RUNBOOK.publishing(run_id, thread)
    thread.start()


def drive_from_elsewhere(
    saga_id: uuid.UUID, *, reason: str, cancel: bool, lease_wait: float
) -> SagaRun | None:
    """Settle a saga from outside its flow run's body (a hook, a finishing flow): roll it back (or
    finish it forward past its pivot), waiting for a killed runner's lease to run out. None when a
    live runner kept it busy for longer than ``lease_wait`` (the recovery sweep finishes it)."""
    from tasks.prefect_steps import invoke_as_task

    app = build_app()
    if cancel:
        app.ledger.request_cancel(saga_id)
    deadline = time.monotonic() + lease_wait
    while True:
        runner = app.runner(invoke_as_task)
        try:
            final = runner.advance(saga_id, Mode.ROLLBACK, reason=reason)
        except SagaBusyError as exc:
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(1.0, max(exc.lease_expires_in or 1.0, 0.1)))
            continue
        finally:
            runner.services.close()
        publish(app.ledger, final)
        return final
