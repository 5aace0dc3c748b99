"""A saga flow's hooks: what happens when the body could not settle its saga itself.

The body settles the saga in the run (forward, or rolled back, or finished past its pivot after a
cancel). The hooks are the safety net, and every one of them is safe to run on a settled saga:

- ``on_failure`` / ``on_crashed`` (in the flow run's process): the body raised unexpectedly, or
  the process is crashing. A saga this run drove that is not settled is rolled back here (or
  finished forward past its pivot), as this run's task runs. A run that was turned away (bad
  input, busy) or that lost its ledger touches nothing: the recovery sweep resumes that saga.
- ``on_cancellation`` (on a process worker: in a separate hook process after the flow run's
  process ended; see PREFECT-NOTES): normally the flow run's process already rolled the saga back
  within Prefect's grace, and this hook only says so in the run's logs. If that process was killed
  first, the rollback goes on in a linked flow run of the ``finish-saga`` deployment, named after
  the saga, which the cancelled run's logs point to (or here, when that deployment does not exist).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from app.wiring import build_app
from flows.runbook import RUNBOOK
from flows.visibility import publish
from sagas.models import SagaRun
from sagas.outcome import outcome_line

_log = logging.getLogger("sagas.flows")
FINISH_DEPLOYMENT = "finish-saga/finish-saga"


def _settled(saga: SagaRun) -> bool:
    return saga.status.is_terminal or saga.status.needs_operator


def _saga_of(flow_run: Any) -> SagaRun | None:
    """The saga this flow run drove, or None (turned away, lost its ledger, or drove none)."""
    run_id = str(flow_run.id)
    turned_away, drove = RUNBOOK.take(run_id)
    if turned_away or RUNBOOK.has_lost_ledger(run_id):
        return None
    app = build_app()
    if drove is not None:
        return app.ledger.get_saga(drove)
    # Another process (a worker's hook process) knows the run only from the ledger's link.
    return app.ledger.find_saga_by_flow_run(uuid.UUID(run_id))


def _say(flow_run: Any, message: str, *, warning: bool = False) -> None:
    """A line in the flow run's own logs, from inside its process or from a hook process."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run=flow_run)
    (logger.warning if warning else logger.info)(message)


def _say_held_elsewhere(flow_run: Any, saga_id: uuid.UUID) -> None:
    """Another runner holds the saga: the recovery sweep finishes it, and the run's logs say so."""
    _say(flow_run, f"saga {saga_id} is held by another runner: the recovery sweep finishes it", warning=True)


def _settle_in_this_run(flow_run: Any, reason: str) -> None:
    from flows.body import drive_from_elsewhere

    RUNBOOK.finish_publishing(str(flow_run.id))
    saga = _saga_of(flow_run)
    if saga is None or _settled(saga):
        return
    final = drive_from_elsewhere(saga.id, reason=reason, cancel=False, lease_wait=_lease_wait())
    if final is None:
        _say_held_elsewhere(flow_run, saga.id)
        return
    _say(flow_run, outcome_line(final, build_app().ledger.list_step_results(final.id)))


def _lease_wait() -> float:
    return build_app().settings.lease_seconds * 1.5 + 1


def on_failure_settle(flow: Any, flow_run: Any, state: Any) -> None:
    _settle_in_this_run(flow_run, f"flow run failed: {state.message}")


def on_crashed_settle(flow: Any, flow_run: Any, state: Any) -> None:
    _settle_in_this_run(flow_run, f"flow run crashed: {state.message}")


def on_cancellation_settle(flow: Any, flow_run: Any, state: Any) -> None:
    from flows.body import drive_from_elsewhere

    RUNBOOK.finish_publishing(str(flow_run.id))
    saga = _saga_of(flow_run)
    if saga is None:
        return
    app = build_app()
    if _settled(saga):
        # The run's own process settled it within the grace: publish (in place) and say so last.
        publish(app.ledger, saga)
        _say(flow_run, outcome_line(saga, app.ledger.list_step_results(saga.id)))
        return
    app.ledger.request_cancel(saga.id)
    linked = _launch_finisher(saga)
    if linked is not None:
        _say(
            flow_run,
            f"saga {saga.id} was still {saga.status.value} when this run's process ended: its rollback"
            f" goes on in flow run {linked} ('{finisher_name(saga)}'), which updates this run's artifacts",
            warning=True,
        )
        return
    final = drive_from_elsewhere(saga.id, reason="flow run cancelled", cancel=True, lease_wait=_lease_wait())
    if final is None:
        _say_held_elsewhere(flow_run, saga.id)
        return
    _say(flow_run, outcome_line(final, app.ledger.list_step_results(final.id)))


def finisher_name(saga: SagaRun) -> str:
    return f"finish {saga.kind} saga {saga.id}"


def _launch_finisher(saga: SagaRun) -> uuid.UUID | None:
    """Start the saga's finishing run on the ``finish-saga`` deployment; None when there is none."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run: Any = run_deployment(
            FINISH_DEPLOYMENT,
            parameters={"saga_id": str(saga.id)},
            flow_run_name=finisher_name(saga),
            timeout=0,
            idempotency_key=f"finish-{saga.id}-{saga.flow_run_id}",
        )
    except ObjectNotFound:
        return None
    except Exception as exc:
        _log.warning("could not start a run of %s for saga %s: %s", FINISH_DEPLOYMENT, saga.id, exc)
        return None
    return uuid.UUID(str(run.id))


def on_completion_publish(flow: Any, flow_run: Any, state: Any) -> None:
    RUNBOOK.finish_publishing(str(flow_run.id))


SAGA_HOOKS: dict[str, Any] = {
    "on_completion": [on_completion_publish],
    "on_failure": [on_failure_settle],
    "on_cancellation": [on_cancellation_settle],
    "on_crashed": [on_crashed_settle],
}
