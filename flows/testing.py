"""The test saga: runs registered steps chosen by the caller, e.g. ``create_droplet_snapshot,fail``.

It replays the seed's live smoke: a real snapshot, a step that fails, and the rollback.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from flows.app import SAGA_HOOKS, run_saga_flow


class TestParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[str] = Field(
        min_length=1,
        max_length=20,
        description="Registered step names in order, e.g. [create_droplet_snapshot, fail].",
    )
    droplet_id: int | None = Field(default=None, gt=0, lt=2**53, description="For snapshot steps.")
    label: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    saga_id: uuid.UUID | None = Field(default=None, description="Makes a double submission harmless.")
    triggered_by: str = Field(default="manual", min_length=1, max_length=200)
    deployment_id: str | None = Field(default=None, max_length=200)


@flow(name="test", log_prints=False, **SAGA_HOOKS)
def test_saga(params: TestParameters) -> dict[str, Any]:
    inputs = params.model_dump(include={"droplet_id", "label"}, exclude_none=True)
    return run_saga_flow(
        "test",
        inputs,
        steps=params.steps,
        saga_id=params.saga_id,
        triggered_by=params.triggered_by,
        deployment_id=params.deployment_id,
    )
