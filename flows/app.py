"""Wiring shared by every saga flow: build the ledger, catalog and runner; the flow hooks.

Every path (the flow body, on_failure, on_cancellation, on_crashed, the recovery sweep) ends in
``Runner.advance`` on the same ledger, so a saga rolls back the same way whoever notices first.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from flows.visibility import publish
from sagas.context import Provisioning
from sagas.errors import ConfigurationError, InputError, ResourceBusyError, SagaBusyError, SagaError
from sagas.ledger.database import engine_for
from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus
from sagas.runner import Invoke, Mode, Runner, invoke_directly
from sagas.services import Services
from sagas.settings import Settings, TokenPurpose, check_token, load_settings
from sagas.steps import Catalog
from tasks.registry import catalog

_log = logging.getLogger("sagas.flows")


@dataclass
class App:
    settings: Settings
    ledger: Ledger
    catalog: Catalog

    def runner(self, invoke: Invoke[Any] = invoke_directly) -> Runner:
        services = Services(
            self.settings, token_source=lambda purpose: secret_block_token(self.settings, purpose)
        )
        return Runner(self.ledger, self.catalog, services, invoke)

    def provisioning(self) -> Provisioning:
        return Provisioning(self.ledger, self.catalog, launch=launch_on_deployment)


def launch_on_deployment(saga: SagaRun) -> None:
    """Start the saga's flow run on its kind's deployment (``<kind>/<kind>`` in prefect.yaml).

    The saga id goes in the parameters and the idempotency key, so launching twice makes one run.
    """
    from prefect.deployments import run_deployment

    params: dict[str, Any] = {**saga.inputs, "saga_id": str(saga.id), "triggered_by": saga.triggered_by}
    if saga.deployment_id is not None:
        params["deployment_id"] = saga.deployment_id
    if saga.kind == "test":
        params["steps"] = list(saga.step_names)
    run_deployment(
        f"{saga.kind}/{saga.kind}",
        parameters={"params": params},
        timeout=0,
        idempotency_key=f"saga-{saga.id}",
    )


def secret_block_token(settings: Settings, purpose: TokenPurpose) -> SecretStr | None:
    """The token from the Prefect Secret block named in settings, if one is named.

    The value must pass ``check_token`` (a refusal names the block, never the value), then goes
    into a SecretStr and from there into the client's header: it is never a flow parameter, never
    logged, never in an artifact.
    """
    block = (
        settings.do_token_provisioning_block
        if purpose is TokenPurpose.PROVISIONING
        else settings.do_token_read_block
    )
    if not block:
        return None
    from prefect.blocks.system import Secret

    try:
        secret: Any = Secret.load(block)  # sync context: the block itself, not a coroutine
        value = secret.get()
    except ValueError as exc:
        raise ConfigurationError(
            f"no Prefect Secret block named {block!r}: create it, or unset the setting"
        ) from exc
    return check_token(str(value), f"the Prefect Secret block {block!r}")


def build_app(settings: Settings | None = None) -> App:
    settings = settings or load_settings()
    return App(settings=settings, ledger=Ledger(engine_for(settings)), catalog=catalog())


class SagaRunFields(BaseModel):
    """Parameters every saga flow takes besides the kind's own inputs."""

    model_config = ConfigDict(extra="forbid")

    saga_id: uuid.UUID | None = Field(
        default=None, description="Give an id to make a double submission start one saga, not two."
    )
    triggered_by: str = Field(default="manual", min_length=1, max_length=200, description="Who asked.")
    deployment_id: str | None = Field(
        default=None, max_length=200, description="The customer deployment this saga works for."
    )

    def saga_inputs(self) -> dict[str, Any]:
        """The kind's inputs: every field but the run fields (and ``steps``, for the test kind)."""
        return self.model_dump(exclude={*SagaRunFields.model_fields, "steps"}, exclude_none=True, mode="json")


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
        _rejected_here.add(run_id)  # this run drove nothing: its hooks must not touch the saga
        raise
    _ran_here[run_id] = saga.id
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
    server. The publishing thread runs meanwhile, and every flow hook joins it first
    (``_publish_finished``), so the run ends with its artifacts in place and in order.
    """
    if not run_id:
        publish(ledger, saga)
        return
    context = contextvars.copy_context()  # the flow run's context: its client, its ids
    thread = threading.Thread(
        target=context.run, args=(publish, ledger, saga), name=f"publish-{saga.id}", daemon=False
    )
    _publishing[run_id] = thread
    thread.start()


def _publish_finished(flow_run: Any) -> None:
    thread = _publishing.pop(str(flow_run.id), None)
    if thread is not None:
        thread.join(timeout=60)


def summary(saga: SagaRun) -> dict[str, Any]:
    return {"saga_id": str(saga.id), "kind": saga.kind, "status": saga.status.value, "context": saga.context}


class _closing:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __enter__(self) -> Runner:
        return self.runner

    def __exit__(self, *exc: object) -> None:
        self.runner.services.close()


# Flow runs of this process whose body claimed their saga: only they may roll it back from a hook.
_ran_here: dict[str, uuid.UUID] = {}
_rejected_here: set[str] = set()
_publishing: dict[str, threading.Thread] = {}  # flow run id -> its publishing thread


def _saga_of(flow_run: Any) -> SagaRun | None:
    """The saga this flow run drove, or None: a run rejected as busy or for bad input owns nothing."""
    if str(flow_run.id) in _rejected_here:
        _rejected_here.discard(str(flow_run.id))
        return None
    app = build_app()
    claimed = _ran_here.pop(str(flow_run.id), None)
    if claimed is not None:
        return app.ledger.get_saga(claimed)
    # Another process (a worker's cancellation handler) knows the run only from the ledger's link.
    return app.ledger.find_saga_by_flow_run(uuid.UUID(str(flow_run.id)))


def _roll_back(flow_run: Any, reason: str, *, cancel: bool) -> None:
    from tasks.prefect_steps import invoke_as_task

    _publish_finished(flow_run)
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
    _publish_finished(flow_run)


SAGA_HOOKS: dict[str, Any] = {
    "on_completion": [on_completion_publish],
    "on_failure": [on_failure_compensate],
    "on_cancellation": [on_cancellation_compensate],
    "on_crashed": [on_crashed_compensate],
}


def saga_flow(kind: str, parameters: type[SagaRunFields], description: str) -> Any:
    """The Prefect flow of one saga kind: typed parameters in, the saga's summary out."""
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

    # Prefect builds the deployment's parameter form from this annotation.
    run.__annotations__["params"] = parameters
    run.__name__ = run.__qualname__ = kind
    run.__doc__ = description
    return flow(name=kind, description=description, log_prints=False, **SAGA_HOOKS)(run)
