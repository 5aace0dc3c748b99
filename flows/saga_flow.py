"""A saga kind's Prefect flow: its parameters, the shared body (``flows.body``) and hooks
(``flows.hooks``).

Every path (the flow body, on_failure, on_cancellation, on_crashed, the recovery sweep) ends in
``Runner.advance`` on the same ledger, so a saga rolls back the same way whoever notices first.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.body import run_saga_flow
from flows.hooks import SAGA_HOOKS


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


def saga_flow(kind: str, parameters: type[SagaRunFields], description: str) -> Any:
    """The Prefect flow of one saga kind: typed parameters in, the saga's summary out."""
    from prefect import flow

    def run(params: SagaRunFields) -> Any:
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
