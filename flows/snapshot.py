"""The snapshot saga: one droplet snapshot, deleted again if the saga rolls back."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import SnapshotKindInputs


class SnapshotParameters(SnapshotKindInputs, SagaRunFields):
    """``droplet_id`` and an optional ``label``, named as DigitalOcean names things."""


snapshot = saga_flow(
    "snapshot", SnapshotParameters, "Snapshot one droplet; deleted again if the saga rolls back."
)
