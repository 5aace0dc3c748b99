"""Run a saga kind's Prefect flow in this process (``sagas run``, the demo) and read the outcome.

The flow records the saga, runs it and rolls it back through its hooks; what happened is then read
from the ledger, which is the truth whatever the flow run's own state says.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from app.wiring import App
from sagas.errors import DestructiveCapError, InputError, ResourceBusyError, SagaBusyError, SagaError
from sagas.models import SagaRun
from sagas.outcome import outcome_line


@dataclass(frozen=True)
class FlowOutcome:
    saga: SagaRun  # as the ledger has it after the run
    # What became of the saga in one line (``sagas.outcome``): the run's own final word when it
    # says the same as the ledger, with what only the run knows (that it followed another run).
    line: str


def run_flow(
    application: App,
    kind: str,
    inputs: dict[str, Any],
    steps: list[str],
    saga_id: uuid.UUID,
    triggered_by: str,
    *,
    errors_to: Console,
    options: dict[str, Any] | None = None,
) -> FlowOutcome:
    """Run the kind's flow here and return the saga as the ledger has it afterwards.

    Busy and bad-input refusals propagate (nothing was written). A saga that did not complete is
    not an error of the flow run (its final state says the saga's outcome, and the ledger is read
    afterwards); any other failure of the run is reported on ``errors_to`` in one line.
    """
    from prefect.exceptions import FailedRun

    from flows import flow_for

    parameters: dict[str, Any] = {
        **inputs,
        "saga_id": saga_id,
        "triggered_by": triggered_by,
        **(options or {}),
    }
    if application.catalog.kind(kind).steps is None:  # the caller chose the steps (test kind)
        parameters["steps"] = steps
    state = flow_for(kind)(**parameters, return_state=True)
    if not state.is_completed():
        try:
            state.result()  # the body's own exception, if it raised one
        except (SagaBusyError, ResourceBusyError, DestructiveCapError, InputError):
            raise
        except FailedRun:
            pass  # the body ended the run with the saga's outcome: expected, not a crash
        except SagaError as exc:
            errors_to.print(f"the flow run failed: {exc}", markup=False)
        except Exception as exc:  # the flow's own failure; the ledger says what became of the saga
            errors_to.print(f"the flow run failed: {type(exc).__name__}: {exc}", markup=False)
    saga = application.ledger.get_saga(saga_id)
    line = outcome_line(saga, application.ledger.list_step_results(saga_id))
    said = state.message or ""
    return FlowOutcome(saga, said if said.startswith(line) else line)
