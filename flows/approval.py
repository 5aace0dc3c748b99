"""A saga awaiting a person's approval, seen from Prefect: the resume form, and a run that holds nothing.

When the runner stops a saga ``awaiting_approval`` (``sagas.operator.approval``), a deployment run
*suspends* (``suspend_flow_run``): its process exits, no worker is held for hours, and the run page
shows a resume form: the plan (what will be destroyed, the snapshot kept, its id and size) above
two fields, approve or reject, and a note. Resuming the run (the form, the REST API
``POST /api/flow_runs/{id}/resume {"run_input": {...}}``, or ``sagas approve``/``sagas reject``)
starts the flow again from the top in a new process: the same ``suspend_flow_run`` call then
returns the answer, which is recorded in the ledger (once), and the saga goes on or rolls back.

A run with no deployment (``sagas run``) cannot suspend: it ends, saying how to approve, and
``sagas approve`` runs the rest. The ledger keeps the deadline; an expired suspended run is only
marked Failed by Prefect (no hook runs), so the recovery sweep rolls such a saga back.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.input import RunInput
from pydantic import Field

from app.wiring import App
from sagas.errors import InputError
from sagas.models import ApprovalDecision, SagaRun, SagaStatus
from sagas.operator.approval import approval_plan, decide


class ApprovalInput(RunInput):
    """The resume form of a saga awaiting approval."""

    decision: Literal["approve", "reject"] = Field(
        description="Approve: the saga goes on past its point of no return. Reject: it rolls back."
    )
    note: str = Field(
        min_length=1, max_length=4000, description="Why: recorded in the ledger with your name."
    )
    by: str = Field(min_length=1, max_length=200, description="Your name, for the ledger.")


def approval_key(saga: SagaRun) -> str:
    return f"approval-{saga.id}"


def waiting_for_a_person(saga: SagaRun) -> bool:
    return saga.status is SagaStatus.AWAITING_APPROVAL and saga.approval_decision is None


def in_a_deployment() -> bool:
    """Whether this flow run belongs to a deployment (so a worker can resume it after a suspend)."""
    from prefect.context import FlowRunContext

    run = FlowRunContext.get()
    return run is not None and run.flow_run is not None and run.flow_run.deployment_id is not None


def suspend_for_approval(app: App, saga: SagaRun, log: Any) -> Any:
    """Suspend this run until a person answers; on the re-run after the answer, record it and
    return; with no deployment (nothing to resume), return None at once."""
    from prefect.flow_runs import suspend_flow_run

    if not in_a_deployment():
        return None
    deadline = saga.approval_deadline_at
    left = math.ceil((deadline - datetime.now(UTC)).total_seconds()) if deadline else None
    if left is not None and left <= 0:
        return None  # the runner rejects it for its deadline and rolls it back
    plan = approval_plan(app.catalog, saga, app.ledger.list_step_results(saga.id))
    form = ApprovalInput.with_initial_data(description=plan)
    # The first call suspends (the process exits); after a resume the same call returns the answer.
    answer: Any = suspend_flow_run(wait_for_input=form, timeout=left, key=approval_key(saga))
    decision = ApprovalDecision.APPROVED if answer.decision == "approve" else ApprovalDecision.REJECTED
    try:
        decide(app.ledger, saga.id, decision, by=answer.by, note=answer.note)
    except InputError as exc:  # already decided (``sagas approve`` records before it resumes)
        log.info(f"approval of saga {saga.id}: {exc}")
    return answer


def _prefect_configured() -> bool:
    """Whether a Prefect server is configured (without one, get_client would start a temporary one)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def resume_with_answer(saga: SagaRun, decision: ApprovalDecision, *, by: str, note: str) -> bool:
    """Resume the saga's suspended flow run with the answer; False when there is none to resume
    (no Prefect server configured, no flow run, or it is not suspended)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    if saga.flow_run_id is None or not _prefect_configured():
        return False
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(saga.flow_run_id)
        except Exception:
            return False
    if run.state is None or not run.state.is_paused():
        return False
    answer = {
        "decision": "approve" if decision is ApprovalDecision.APPROVED else "reject",
        "note": note,
        "by": by,
    }
    resume_flow_run(saga.flow_run_id, run_input=answer)
    return True


def end_a_suspended_run(saga: SagaRun, message: str) -> None:
    """The saga was settled while its flow run sat suspended: end that run (Cancelled), saying how."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    if saga.flow_run_id is None or not _prefect_configured():
        return
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(saga.flow_run_id)
            if run.state is not None and run.state.is_paused():
                client.set_flow_run_state(saga.flow_run_id, Cancelled(message=message), force=True)
        except Exception:
            return


def runs_that_gave_up(app: App) -> list[SagaRun]:
    """Sagas still awaiting a person whose suspended flow run ended anyway (cancelled from the UI or
    the API, or expired: Prefect runs no hook for either): they are to roll back."""
    from prefect.client.orchestration import get_client

    waiting = [
        s
        for s in app.ledger.list_sagas(status=SagaStatus.AWAITING_APPROVAL, limit=1000)
        if waiting_for_a_person(s) and not s.cancel_requested and s.flow_run_id is not None
    ]
    if not waiting or not _prefect_configured():
        return []
    ended = []
    with get_client(sync_client=True) as client:
        for saga in waiting:
            try:
                run = client.read_flow_run(saga.flow_run_id)  # type: ignore[arg-type]
            except Exception:
                continue
            if run.state is not None and run.state.is_final():
                ended.append(saga)
    return ended
