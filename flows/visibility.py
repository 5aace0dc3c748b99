"""What a saga shows in Prefect: a table artifact with its ledger, and an event when it ends.

An automation can match ``arcadia.saga.compensation_failed`` (see deployments/automations/) to
page someone. Only ledger data is published: step names, statuses, idempotency keys, resource ids
and errors, never settings or tokens.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus, StepResult
from sagas.timeline import render_svg

_log = logging.getLogger("sagas.flows")
ANNOUNCED = (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.COMPENSATION_FAILED, SagaStatus.FAILED)
EVENT_PREFIX = "arcadia.saga"


def ledger_rows(ledger: Ledger, saga: SagaRun, steps: list[StepResult] | None = None) -> list[dict[str, Any]]:
    steps = ledger.list_step_results(saga.id) if steps is None else steps
    return [
        {
            "step": f"{s.step_idx}. {s.step_name}",
            "status": s.status.value,
            "idempotency key": s.idempotency_key or "",
            "resources": json.dumps(
                {
                    k: v
                    for k, v in s.output.items()
                    if k.endswith("_id") or k in ("snapshot_name", "fqdn", "name")
                },
                sort_keys=True,
            ),
            "attempts": s.attempts,
            "undo attempts": s.compensation_attempts,
            "error": s.error or "",
        }
        for s in steps
    ]


def create_artifacts(artifacts: list[Any]) -> None:
    """Create Prefect artifacts on the current flow run, through the run's own API client.

    ``create_table_artifact`` and friends open a new API client (and connection) for every
    artifact; the flow run's client is already connected. Outside a flow run (the CLI), each
    artifact creates itself the usual way.
    """
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.context import FlowRunContext
    from prefect.utilities.context import get_task_and_flow_run_ids

    run = FlowRunContext.get()
    client = run.client if run is not None else None
    if not isinstance(client, SyncPrefectClient):
        for artifact in artifacts:
            artifact.create(_sync=True)
        return
    task_run_id, flow_run_id = get_task_and_flow_run_ids()
    for artifact in artifacts:
        client.create_artifact(
            artifact=ArtifactCreate(
                type=artifact.type,
                key=artifact.key,
                description=artifact.description,
                task_run_id=task_run_id,
                flow_run_id=flow_run_id,
                data=artifact.format(_sync=True),
            )
        )


def publish(ledger: Ledger, saga: SagaRun) -> None:
    """Publish the saga's ledger as an artifact and, on a final status, emit its event."""
    from prefect.artifacts import ImageArtifact, TableArtifact
    from prefect.events import emit_event

    try:
        steps = ledger.list_step_results(saga.id)
        svg = render_svg(saga, steps).encode()
        create_artifacts(
            [
                ImageArtifact(
                    image_url="data:image/svg+xml;base64," + base64.b64encode(svg).decode(),
                    key=f"saga-{saga.id}-timeline",
                    description=f"timeline of {saga.kind} saga {saga.id} ({saga.status.value})",
                ),
                TableArtifact(
                    key=f"saga-{saga.id}",
                    table=ledger_rows(ledger, saga, steps),
                    description=f"**{saga.kind} saga {saga.id}: {saga.status.value}**"
                    + (f"\n\n{saga.error}" if saga.error else ""),
                ),
            ]
        )
        if saga.status in ANNOUNCED:
            emit_event(
                event=f"{EVENT_PREFIX}.{saga.status.value}",
                resource={
                    "prefect.resource.id": f"{EVENT_PREFIX}.{saga.id}",
                    "prefect.resource.name": f"{saga.kind} saga {saga.id}",
                    "arcadia.saga.kind": saga.kind,
                    "arcadia.saga.resource": saga.resource or "",
                },
                payload={"status": saga.status.value, "error": saga.error, "triggered_by": saga.triggered_by},
            )
    except Exception as exc:  # visibility must never change a saga's outcome
        _log.warning("could not publish saga %s to Prefect: %s", saga.id, exc)
