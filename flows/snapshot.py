"""The snapshot saga: one droplet snapshot, deleted again if the saga rolls back."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.app import SAGA_HOOKS, SagaRunFields, run_saga_flow
from tasks.registry import SnapshotKindInputs


class SnapshotParameters(SnapshotKindInputs, SagaRunFields):
    """``droplet_id`` and an optional ``label``, named as DigitalOcean names things."""


@flow(name="snapshot", log_prints=False, **SAGA_HOOKS)
def snapshot(params: SnapshotParameters) -> dict[str, Any]:
    return run_saga_flow(
        "snapshot",
        params.saga_inputs(),
        steps=None,
        saga_id=params.saga_id,
        triggered_by=params.triggered_by,
        deployment_id=params.deployment_id,
    )
