"""What a saga shows in Prefect: its ledger as a table, its timeline as a picture, an event when it ends.

Everything is published *to the saga's own flow run* (``saga.flow_run_id``), whichever process
publishes: the flow run itself, a worker's cancellation hook, the recovery sweep. Each artifact is
one card per key, updated in place when the saga moves on (no look-alike cards), and the terminal
event carries the flow run as a related resource, with an id derived from the saga and its end,
so publishing twice emits it once.

Only ledger data is published: step names, statuses, idempotency keys, resource ids and errors,
never settings or tokens. An automation can match ``arcadia.saga.compensation_failed`` (see
deployments/automations/) to page someone.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

from flows.runbook import RUNBOOK
from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus, StepResult
from sagas.outcome import outcome_line
from sagas.timeline import render_svg

_log = logging.getLogger("sagas.flows")
ANNOUNCED = (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.COMPENSATION_FAILED, SagaStatus.FAILED)
EVENT_PREFIX = "arcadia.saga"
_EVENTS = uuid.UUID("0b8f6a0e-77c5-4a4f-9f6e-3c1a2d9b7e51")
# What a step's output says about the provider's resources, in the order people look for them.
_RESOURCE_FIELDS = ("snapshot_name", "snapshot_id", "droplet_id", "fqdn", "record_id", "name", "action_id")


def _resources(step: StepResult) -> str:
    shown = [f"{k}={step.output[k]}" for k in _RESOURCE_FIELDS if step.output.get(k) not in (None, "")]
    if step.output.get("skipped"):
        shown.append(str(step.output["skipped"]))
    return ", ".join(shown)


def _tries(step: StepResult) -> str:
    undo = step.compensation_attempts
    return f"{step.attempts}" + (f" + {undo} undo" if undo == 1 else f" + {undo} undos" if undo else "")


def ledger_rows(steps: list[StepResult]) -> list[dict[str, Any]]:
    """The table artifact: what happened to each step first, what it touched after. Prefect's table
    does not wrap its cells and shows about 840 px of them beside the run's details on a 1400 px
    screen: a long resources cell before ``tries`` and ``error`` pushed both out of sight."""
    return [
        {
            "#": s.step_idx,
            "step": s.step_name,
            "status": "failed, undone" if s.status.value == "failed" and s.compensated_at else s.status.value,
            "tries": _tries(s),
            "error": (s.error or "")[:160],
            "resources": _resources(s),
            # A skipped step never touched the provider: its key names nothing to look for.
            "idempotency key": "" if s.status.value == "skipped" else s.idempotency_key or "",
        }
        for s in steps
    ]


def headline(saga: SagaRun, steps: list[StepResult]) -> str:
    """The outcome without the saga's id, which the artifact's key already carries: a run's artifact
    cards show only the first ~45 characters of a description, and with the id first they showed
    no outcome at all."""
    return outcome_line(saga, steps).replace(f"{saga.kind} saga {saga.id} ", f"{saga.kind} saga ", 1)


def timeline_markdown(saga: SagaRun, steps: list[StepResult]) -> str:
    svg = render_svg(saga, steps).encode()
    picture = "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
    return (
        f"![timeline of {saga.kind} saga {saga.id}]({picture})\n\n"
        "Bars: a step's run (green done, red failed), the provider's own wait inside it (hatched),"
        " its undo (orange done, dark red failed)."
    )


def publish(ledger: Ledger, saga: SagaRun, *, steps: list[StepResult] | None = None) -> None:
    """Publish the saga's ledger and timeline on its flow run and, on a final status, its event.

    Safe to call from anywhere, any number of times. Never raises: what Prefect shows must never
    change what becomes of a saga.
    """
    try:
        steps = ledger.list_step_results(saga.id) if steps is None else steps
        run_id = saga.flow_run_id or _current_flow_run_id()
        with _client() as client:
            if run_id is not None:
                heading = f"**{headline(saga, steps)}**"
                _upsert(client, run_id, f"saga-{saga.id}", "table", json.dumps(ledger_rows(steps)), heading)
                _upsert(
                    client,
                    run_id,
                    f"saga-{saga.id}-timeline",
                    "markdown",
                    timeline_markdown(saga, steps),
                    f"timeline of the {saga.kind} saga, {saga.status.value.replace('_', ' ')}",
                )
        if saga.status in ANNOUNCED:
            _announce(saga, run_id)
    except Exception as exc:  # visibility must never change a saga's outcome
        _log.warning("could not publish saga %s to Prefect: %s", saga.id, exc)


def _current_flow_run_id() -> uuid.UUID | None:
    from prefect.context import FlowRunContext

    run = FlowRunContext.get()
    return run.flow_run.id if run is not None and run.flow_run is not None else None


class _client:
    """The flow run's own API client when there is one (already connected), else a new one."""

    def __enter__(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient, get_client
        from prefect.context import FlowRunContext

        run = FlowRunContext.get()
        if run is not None and isinstance(run.client, SyncPrefectClient):
            self._owned: Any = None
            return run.client
        self._owned = get_client(sync_client=True)
        return self._owned.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._owned is not None:
            self._owned.__exit__(*exc)


def _upsert(client: Any, run_id: uuid.UUID, key: str, kind: str, data: str, description: str) -> None:
    """One card per key on the run: update the one there is, or create it."""
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    known = RUNBOOK.artifact(str(run_id), key)
    if known is None:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
            ),
            limit=1,
        )
        known = found[0].id if found else None
    if known is not None:
        client.update_artifact(known, ArtifactUpdate(data=data, description=description))
    else:
        created = client.create_artifact(
            ArtifactCreate(type=kind, key=key, data=data, description=description, flow_run_id=run_id)
        )
        known = created.id
    RUNBOOK.remember_artifact(str(run_id), key, known)


def _announce(saga: SagaRun, run_id: uuid.UUID | None) -> None:
    from prefect.events import emit_event

    related = (
        [{"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}]
        if run_id is not None
        else []
    )
    emit_event(
        event=f"{EVENT_PREFIX}.{saga.status.value}",
        resource={
            "prefect.resource.id": f"{EVENT_PREFIX}.{saga.id}",
            "prefect.resource.name": f"{saga.kind} saga {saga.id}",
            "arcadia.saga.kind": saga.kind,
            "arcadia.saga.resource": saga.resource or "",
        },
        related=related,
        payload={"status": saga.status.value, "error": saga.error, "triggered_by": saga.triggered_by},
        # One event per ending: the server keeps the first of two with one id.
        id=uuid.uuid5(_EVENTS, f"{saga.id}:{saga.status.value}:{saga.finished_at}"),
    )
