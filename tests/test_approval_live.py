"""A person approves the point of no return, through Prefect: a real server and process worker.

An offboard deployment run stops with its final snapshot made and the droplet untouched, suspends
(its process exits: no worker process is held while it waits), and shows a resume form. Answering
through the Prefect API (the run's input), ``sagas approve``, a rejection, a cancel of the waiting
run, or the deadline each end the saga as they should.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from tests.prefect_live import LivePrefect, prefect_live_fixture  # noqa: F401
from tests.support.waiting import wait_until
from tests.test_kinds import expected_after, prepare, world

pytestmark = pytest.mark.slow


def _suspended_offboard(
    prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger, **extra: Any
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    inputs = prepare("offboard", sim, api)
    before = world(sim, api)
    run = prefect_live.run_deployment("offboard/offboard", {**inputs, **extra}, timeout=0)

    def suspended() -> Any:
        with prefect_live.client() as client:
            state = client.read_flow_run(run.id).state
        return state is not None and state.is_paused()

    wait_until(suspended, "the run to suspend for approval")
    saga = ledger.find_saga_by_flow_run(run.id)
    assert saga is not None and saga.status is SagaStatus.AWAITING_APPROVAL, saga
    return run, saga, inputs, before


def _resume(prefect_live: LivePrefect, run_id: uuid.UUID, answer: dict[str, str]) -> None:
    with httpx.Client(base_url=prefect_live.api_url, timeout=10) as prefect:
        response = prefect.post(f"/flow_runs/{run_id}/resume", json={"run_input": answer})
    assert response.status_code < 300 and response.json().get("status") == "ACCEPT", response.text


def test_an_offboard_run_suspends_for_approval_holding_no_worker_process_and_approval_finishes_it(
    prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    run, saga, inputs, before = _suspended_offboard(prefect_live, sim, api, ledger)
    # Final snapshot made; droplet still on; DNS record still there.
    assert world(sim, api) == expected_after(["create_droplet_snapshot"], before, saga, inputs)
    # The run's process exited: the worker holds no flow run process while the saga waits.
    wait_until(lambda: len(prefect_live.worker_processes()) == 1, "the run's process to exit", timeout=30)
    # The resume form shows the plan.
    with httpx.Client(base_url=prefect_live.api_url, timeout=10) as prefect:
        description = prefect.get(f"/flow_runs/{run.id}/input/suspended-approval-{saga.id}-description")
    assert description.status_code == 200, description.text
    plan = description.json()
    assert "delete_droplet" in plan and "snapshot" in plan and "GB" in plan
    _resume(prefect_live, run.id, {"decision": "approve", "note": "customer left", "by": "alice"})
    final = prefect_live.wait_for_flow_run(run.id, timeout=120)
    assert final.state_type.value == "COMPLETED", (final.state, prefect_live.worker_log())
    done = ledger.get_saga(saga.id)
    assert done.status is SagaStatus.COMPLETED and done.approval_by == "alice"
    assert world(sim, api) == expected_after(list(done.step_names), before, done, inputs)


def test_a_rejection_through_the_api_rolls_the_saga_back_to_the_world_before(
    prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    run, saga, _inputs, before = _suspended_offboard(prefect_live, sim, api, ledger)
    _resume(prefect_live, run.id, {"decision": "reject", "note": "wrong customer", "by": "bob"})
    final = prefect_live.wait_for_flow_run(run.id, timeout=120)
    assert final.state_type.value == "FAILED" and "rolled back" in (final.state.message or "")
    assert ledger.get_saga(saga.id).status is SagaStatus.ROLLED_BACK
    assert world(sim, api) == before


def test_sagas_approve_resumes_the_suspended_run(
    prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    run, saga, _inputs, _before = _suspended_offboard(prefect_live, sim, api, ledger)
    with prefect_live.settings():
        result = CliRunner().invoke(
            cli, ["approve", str(saga.id), "--note", "ok", "--by", "carol"], catch_exceptions=False
        )
    assert result.exit_code == 0, result.output
    assert f"its flow run {run.id} resumes it" in result.output
    final = prefect_live.wait_for_flow_run(run.id, timeout=120)
    assert final.state_type.value == "COMPLETED", final.state
    assert ledger.get_saga(saga.id).status is SagaStatus.COMPLETED


def _sweep(prefect_live: LivePrefect) -> None:
    run = prefect_live.run_deployment("recovery-sweep/recovery-sweep", {}, timeout=120)
    assert run.state_type.value == "COMPLETED", run.state


def test_a_cancel_of_the_waiting_run_rolls_the_saga_back(
    prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    from prefect.states import Cancelling

    run, saga, _inputs, before = _suspended_offboard(prefect_live, sim, api, ledger)
    with prefect_live.client() as client:
        client.set_flow_run_state(run.id, Cancelling())
    wait_until(
        lambda: prefect_live.wait_for_flow_run(run.id, timeout=None).state_type.value == "CANCELLED",
        "the run to be cancelled",
    )
    _sweep(prefect_live)  # Prefect runs no hook for a suspended run: the sweep notices
    assert ledger.get_saga(saga.id).status is SagaStatus.ROLLED_BACK
    assert world(sim, api) == before


def test_no_answer_by_the_deadline_rolls_the_saga_back_and_says_so(
    prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    _run, saga, _inputs, before = _suspended_offboard(prefect_live, sim, api, ledger)
    with ledger._engine.begin() as conn:  # the deadline (24 h by default) has passed
        from sqlalchemy import text

        conn.execute(
            text("UPDATE saga_runs SET approval_deadline_at = now() - interval '1 second' WHERE id = :id"),
            {"id": saga.id},
        )
    _sweep(prefect_live)
    done = ledger.get_saga(saga.id)
    assert done.status is SagaStatus.ROLLED_BACK
    assert done.approval_by == "the approval deadline" and (done.error or "").startswith(
        "rejected by the approval deadline: no answer within"
    )
    assert world(sim, api) == before
