"""The snapshot saga: one droplet snapshot, deleted again if the saga rolls back."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from flows.app import SAGA_HOOKS, run_saga_flow


class SnapshotParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    droplet_id: int = Field(gt=0, lt=2**53, description="DigitalOcean droplet id to snapshot.")
    label: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
        description="Optional suffix for the snapshot name (lowercase letters, digits, dashes).",
    )
    saga_id: uuid.UUID | None = Field(
        default=None, description="Give an id to make a double submission start one saga, not two."
    )
    triggered_by: str = Field(default="manual", min_length=1, max_length=200, description="Who asked.")
    deployment_id: str | None = Field(default=None, max_length=200, description="Customer deployment.")


@flow(name="snapshot", log_prints=False, **SAGA_HOOKS)
def snapshot(params: SnapshotParameters) -> dict[str, Any]:
    inputs = params.model_dump(include={"droplet_id", "label"}, exclude_none=True)
    return run_saga_flow(
        "snapshot",
        inputs,
        steps=None,
        saga_id=params.saga_id,
        triggered_by=params.triggered_by,
        deployment_id=params.deployment_id,
    )
