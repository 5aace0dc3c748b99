"""The body every saga flow shares, its parameters, and the hooks that roll a saga back.

Every path (the flow body, on_failure, on_cancellation, on_crashed, the recovery sweep) ends in
``Runner.advance`` on the same ledger, so a saga rolls back the same way whoever notices first.
What a hook may touch is decided by ``flows.runbook``: only the saga this run drove.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from typing import Any

from app.wiring import build_app
from flows.parameters import SagaRunFields, saga_flow_function
from flows.runbook import RUNBOOK
from flows.visibility import publish
from sagas.errors import InputError, ResourceBusyError, SagaBusyError, SagaError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus
from sagas.runner import Mode, Runner
from sagas.steps import Catalog

_log = logging.getLogger("sagas.flows")


class SagaDidNotComplete(SagaError):
    """Raised by a flow whose saga must roll back: it fails the flow run so on_failure compensates."""


def run_saga_flow(
    kind: str,
    inputs: dict[str, Any],
    *,
    steps: list[str] | None,
    saga_id: uuid.UUID | None,
    triggered_by: str,
    deployment_id: str | None,
) -> dict[str, Any]:
    """The body every saga flow shares: record (idempotently), claim, run forward."""
    from prefect.runtime import flow_run

    from tasks.prefect_steps import invoke_as_task

    app = build_app()
    run_id = str(flow_run.id or "")
    try:
        saga = app.provisioning().create_saga(
            kind,
            inputs,
            steps=steps,
            saga_id=saga_id,
            triggered_by=triggered_by,
            deployment_id=deployment_id,
            flow_run_id=uuid.UUID(run_id) if run_id else None,
        )
        with _closing(app.runner(invoke_as_task)) as runner:
            result = runner.advance(saga.id, Mode.FORWARD)
    except (InputError, SagaBusyError, ResourceBusyError):
        RUNBOOK.turned_away(run_id)  # this run drove nothing: its hooks must not touch the saga
        raise
    RUNBOOK.drove(run_id, saga.id)
    _publish_while_prefect_finishes(run_id, app.ledger, result)
    if result.status is SagaStatus.COMPENSATING:
        raise SagaDidNotComplete(f"saga {saga.id} is rolling back: {result.error}")
    if result.status is not SagaStatus.COMPLETED:
        raise SagaDidNotComplete(f"saga {saga.id} ended {result.status.value}: {result.error}")
    return summary(result)


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


def summary(saga: SagaRun) -> dict[str, Any]:
    return {"saga_id": str(saga.id), "kind": saga.kind, "status": saga.status.value, "context": saga.context}


class _closing:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __enter__(self) -> Runner:
        return self.runner

    def __exit__(self, *exc: object) -> None:
        self.runner.services.close()


def _saga_of(flow_run: Any) -> SagaRun | None:
    """The saga this flow run drove, or None: a run turned away (busy, bad input) owns nothing."""
    turned_away, drove = RUNBOOK.take(str(flow_run.id))
    if turned_away:
        return None
    app = build_app()
    if drove is not None:
        return app.ledger.get_saga(drove)
    # Another process (a worker's cancellation handler) knows the run only from the ledger's link.
    return app.ledger.find_saga_by_flow_run(uuid.UUID(str(flow_run.id)))


def _roll_back(flow_run: Any, reason: str, *, cancel: bool) -> None:
    from tasks.prefect_steps import invoke_as_task

    RUNBOOK.finish_publishing(str(flow_run.id))
    saga = _saga_of(flow_run)
    if saga is None:
        _log.info("flow run %s drove no saga (rejected, or busy): nothing to roll back", flow_run.id)
        return
    app = build_app()
    if cancel:
        app.ledger.request_cancel(saga.id)
    # The runner that held the saga may be the process Prefect just killed (a cancel on a process
    # worker): its lease then runs out on its own. Wait for it rather than leave the saga to the
    # sweep; if that runner is alive instead, it rolls back itself and we find nothing to do.
    deadline = time.monotonic() + app.settings.lease_seconds * 1.5 + 1
    while True:
        try:
            with _closing(app.runner(invoke_as_task)) as runner:
                final = runner.advance(saga.id, Mode.ROLLBACK, reason=reason)
            break
        except SagaBusyError as exc:
            if time.monotonic() >= deadline:
                _log.warning("not rolling back here: %s (the recovery sweep will)", exc)
                return
            time.sleep(min(1.0, max(exc.lease_expires_in or 1.0, 0.1)))
    _log.info("saga %s is %s", saga.id, final.status.value)
    publish(app.ledger, final)


def on_failure_compensate(flow: Any, flow_run: Any, state: Any) -> None:
    _roll_back(flow_run, f"flow run failed: {state.message}", cancel=False)


def on_cancellation_compensate(flow: Any, flow_run: Any, state: Any) -> None:
    _roll_back(flow_run, "flow run cancelled", cancel=True)


def on_crashed_compensate(flow: Any, flow_run: Any, state: Any) -> None:
    _roll_back(flow_run, f"flow run crashed: {state.message}", cancel=False)


def on_completion_publish(flow: Any, flow_run: Any, state: Any) -> None:
    RUNBOOK.finish_publishing(str(flow_run.id))


SAGA_HOOKS: dict[str, Any] = {
    "on_completion": [on_completion_publish],
    "on_failure": [on_failure_compensate],
    "on_cancellation": [on_cancellation_compensate],
    "on_crashed": [on_crashed_compensate],
}


def saga_flow(kind: str, description: str, registry: Catalog | None = None) -> Any:
    """The Prefect flow of one saga kind: its inputs as flat, typed parameters in, the summary out.

    The parameters come from the registry's inputs model (``flows.parameters``), so the run form,
    the REST body and the server's schema check all say what the runner accepts. ``registry``
    replaces the product's registry (a benchmark with steps of its own).
    """
    from prefect import flow

    def run(params: SagaRunFields) -> dict[str, Any]:
        return run_saga_flow(
            kind,
            params.saga_inputs(),
            steps=getattr(params, "steps", None),
            saga_id=params.saga_id,
            triggered_by=params.triggered_by,
            deployment_id=params.deployment_id,
        )

    function = saga_flow_function(kind, run, description, registry)
    return flow(name=kind, description=description, log_prints=False, **SAGA_HOOKS)(function)
