"""Recovery: the sweep that finishes every saga whose runner died, and the flow that finishes one.

- ``recovery-sweep`` (every 5 minutes): resume or roll back sagas whose lease expired; see
  ``sagas.recovery`` for why running it twice, or next to live runners, is safe. Each saga it
  settles is published to the saga's own flow run (its artifacts there are updated in place) and
  that run's logs say the sweep finished it. A dead runner's saga is therefore settled within its
  lease plus five minutes.
- ``finish-saga``: started by a cancelled run's hook when the run's process was killed before it
  could roll its saga back; named after the saga, it waits out the dead runner's lease and rolls
  the saga back (or finishes it forward past its pivot).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed
from pydantic import Field, Strict

from app.wiring import build_app
from flows.approval import end_a_suspended_run, runs_that_gave_up
from flows.body import drive_from_elsewhere
from flows.visibility import publish
from sagas.models import SagaRun, SagaStatus
from sagas.outcome import outcome_line
from sagas.recovery import sweep


def _tell_its_run(saga: SagaRun, line: str) -> None:
    """The saga's own flow run hears what became of it, whoever finished it."""
    if saga.flow_run_id is None:
        return
    from prefect.logging.loggers import flow_run_logger

    flow_run_logger(flow_run_id=saga.flow_run_id).info(line)


@flow(name="recovery-sweep", log_prints=False)
def recovery_sweep(
    limit: Annotated[
        int, Strict(), Field(ge=1, le=10_000, json_schema_extra={"title": "Sagas a sweep"})
    ] = 100,
) -> dict[str, Any]:
    """Resume or roll back sagas whose lease expired (at most ``limit`` a sweep); publish their ledgers.

    Args:
        limit: The most sagas one sweep finishes (1-10000); the next sweep takes the rest.
    """
    from tasks.prefect_steps import invoke_as_task

    app = build_app()
    log = get_run_logger()

    def done(saga: SagaRun) -> None:
        line = f"recovered by the sweep: {outcome_line(saga, app.ledger.list_step_results(saga.id))}"
        log.info(line)
        _tell_its_run(saga, line)
        publish(app.ledger, saga)
        end_a_suspended_run(saga, line)

    for saga in runs_that_gave_up(app):
        log.info(f"saga {saga.id}'s suspended flow run ended while it awaited approval: rolling it back")
        app.ledger.request_cancel(saga.id)
    report = sweep(
        app.ledger,
        lambda: app.runner(invoke_as_task),
        pending_grace_seconds=app.settings.recovery_pending_grace_seconds,
        limit=limit,
        on_done=done,
    )
    return asdict(report)


@flow(name="finish-saga", log_prints=False)
def finish_saga(saga_id: uuid.UUID) -> Any:
    """Finish a saga whose cancelled flow run's process died before it could roll it back."""
    app = build_app()
    log = get_run_logger()
    final = drive_from_elsewhere(
        saga_id, reason="flow run cancelled", cancel=True, lease_wait=app.settings.lease_seconds * 1.5 + 1
    )
    if final is None:
        message = f"saga {saga_id} is held by a live runner: it rolls back itself, or the sweep finishes it"
        log.warning(message)
        return Completed(message=message)
    line = outcome_line(final, app.ledger.list_step_results(final.id))
    log.info(line)
    _tell_its_run(final, line)
    if final.status in (SagaStatus.ROLLED_BACK, SagaStatus.COMPLETED):
        return Completed(message=line)
    return Failed(message=line)
