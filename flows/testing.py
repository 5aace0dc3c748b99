"""The test saga: runs registered steps chosen by the caller, e.g. ``create_droplet_snapshot,fail``.

It replays the seed's live smoke: a real snapshot, a step that fails, and the rollback.
"""

from __future__ import annotations

from pydantic import Field

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import TestKindInputs


class TestParameters(TestKindInputs, SagaRunFields):
    steps: list[str] = Field(
        min_length=1,
        max_length=20,
        description="Registered step names in order, e.g. [create_droplet_snapshot, fail].",
    )


test_saga = saga_flow("test", TestParameters, "Run registered steps chosen by the caller (smoke tests).")
