"""The test saga: runs registered steps chosen by the caller, e.g. ``create_droplet_snapshot,fail``.

It replays the seed's live smoke: a real snapshot, a step that fails, and the rollback.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import Field

from flows.app import SAGA_HOOKS, SagaRunFields, run_saga_flow
from tasks.registry import TestKindInputs


class TestParameters(TestKindInputs, SagaRunFields):
    steps: list[str] = Field(
        min_length=1,
        max_length=20,
        description="Registered step names in order, e.g. [create_droplet_snapshot, fail].",
    )


@flow(name="test", log_prints=False, **SAGA_HOOKS)
def test_saga(params: TestParameters) -> dict[str, Any]:
    return run_saga_flow(
        "test",
        params.saga_inputs(),
        steps=params.steps,
        saga_id=params.saga_id,
        triggered_by=params.triggered_by,
        deployment_id=params.deployment_id,
    )
