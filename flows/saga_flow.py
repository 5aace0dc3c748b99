"""A saga kind's Prefect flow: flat parameters from the registry (``flows.parameters``), the shared
body (``flows.body``) and the hooks (``flows.hooks``).

Every path (the flow body, on_failure, on_cancellation, on_crashed, the recovery sweep) ends in
``Runner.advance`` on the same ledger, so a saga rolls back the same way whoever notices first.
"""

from __future__ import annotations

from typing import Any

from flows.body import run_saga_flow
from flows.hooks import SAGA_HOOKS
from flows.parameters import SagaRunFields, saga_flow_function
from sagas.steps import Catalog


def saga_flow(kind: str, description: str, registry: Catalog | None = None) -> Any:
    """The Prefect flow of one saga kind: its inputs as flat, typed parameters in, the outcome out.

    The parameters come from the registry's inputs model (``flows.parameters``), so the run form,
    the REST body and the server's schema check all say what the runner accepts. ``registry``
    replaces the product's registry (a benchmark with steps of its own).
    """
    from prefect import flow

    def run(params: SagaRunFields) -> Any:
        return run_saga_flow(
            kind,
            params.saga_inputs(),
            steps=getattr(params, "steps", None),
            saga_id=params.saga_id,
            triggered_by=params.triggered_by,
            deployment_id=params.deployment_id,
            options=params.saga_options(),
        )

    function = saga_flow_function(kind, run, description, registry)
    return flow(name=kind, description=description, log_prints=False, **SAGA_HOOKS)(function)
