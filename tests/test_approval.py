"""A person approves the point of no return (the ledger and the runner; the Prefect side is
tests/test_approval_live.py and, for ``sagas run``, tests/test_cli_and_flows.py).

Offboard and rollback stop ``awaiting_approval`` by default after their snapshot and before the
power-off, keeping the droplet locked; approved, they go on; rejected, unanswered by the deadline
or cancelled, they roll back; a decision is given once.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from sagas.errors import InputError
from sagas.ledger.store import Ledger
from sagas.models import ApprovalDecision, SagaStatus
from sagas.operator.approval import decide
from sagas.recovery import sweep
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import advance_saga
from tests.test_kinds import expected_after, prepare, world


def _start(ledger: Ledger, kind: str, inputs: dict[str, Any], **options: Any) -> uuid.UUID:
    saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, options=options or None))
    return saga.id


@pytest.mark.parametrize("kind", ["offboard", "rollback"])
def test_offboard_and_rollback_stop_for_approval_with_their_snapshot_kept_and_the_droplet_untouched(
    kind: str, sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare(kind, sim, api)
    before = world(sim, api)
    saga_id = _start(ledger, kind, inputs)
    saga = advance_saga(ledger, settings, saga_id)
    assert saga.status is SagaStatus.AWAITING_APPROVAL, saga.error
    assert saga.approval_requested_at is not None and saga.approval_deadline_at is not None
    steps = ledger.list_step_results(saga_id)
    assert [(s.step_name, s.status.value) for s in steps] == [("create_droplet_snapshot", "completed")]
    # The snapshot is made; the droplet is still on, its DNS record still there; the lock is held.
    assert world(sim, api) == expected_after(["create_droplet_snapshot"], before, saga, inputs)
    assert ledger.resource_holder(f"droplet:{inputs['droplet_id']}") == saga_id
    assert saga.lease_owner is None  # it holds no runner while it waits
    # Advancing it again before anyone answered changes nothing.
    again = advance_saga(ledger, settings, saga_id)
    assert again.status is SagaStatus.AWAITING_APPROVAL
    assert len(ledger.list_step_results(saga_id)) == 1


def test_an_approved_offboard_goes_on_past_its_point_of_no_return_and_keeps_its_final_snapshot(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare("offboard", sim, api)
    before = world(sim, api)
    saga_id = _start(ledger, "offboard", inputs)
    advance_saga(ledger, settings, saga_id)
    decide(ledger, saga_id, ApprovalDecision.APPROVED, by="alice", note="customer left, ticket 42")
    saga = advance_saga(ledger, settings, saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert (saga.approval_decision, saga.approval_by, saga.approval_note) == (
        ApprovalDecision.APPROVED,
        "alice",
        "customer left, ticket 42",
    )
    assert world(sim, api) == expected_after(list(saga.step_names), before, saga, inputs)
    with pytest.raises(InputError, match="completed, not awaiting approval"):
        decide(ledger, saga_id, ApprovalDecision.REJECTED, by="bob", note="too late")
    actions = ledger.list_operator_actions(target=f"saga:{saga_id}")
    assert [(a.action, a.performed_by, a.detail["note"]) for a in actions] == [
        ("approval_approved", "alice", "customer left, ticket 42")
    ]


def test_a_decision_is_given_once_and_a_second_one_is_refused_naming_the_first(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    saga_id = _start(ledger, "offboard", prepare("offboard", sim, api))
    advance_saga(ledger, settings, saga_id)
    decide(ledger, saga_id, ApprovalDecision.REJECTED, by="alice", note="wrong droplet")
    with pytest.raises(InputError, match="already rejected by alice"):
        decide(ledger, saga_id, ApprovalDecision.APPROVED, by="bob", note="go")
    assert ledger.get_saga(saga_id).approval_decision is ApprovalDecision.REJECTED


def test_a_rejected_rollback_saga_rolls_back_to_the_world_before_it(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare("rollback", sim, api)
    before = world(sim, api)
    saga_id = _start(ledger, "rollback", inputs)
    advance_saga(ledger, settings, saga_id)
    decide(ledger, saga_id, ApprovalDecision.REJECTED, by="bob", note="restore the other snapshot")
    saga = advance_saga(ledger, settings, saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert saga.error == "rejected by bob: restore the other snapshot"
    assert world(sim, api) == before
    assert ledger.resource_holder(f"droplet:{inputs['droplet_id']}") is None


def test_no_answer_before_the_deadline_rolls_the_saga_back_through_the_sweep_and_says_so(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare("offboard", sim, api)
    before = world(sim, api)
    saga_id = _start(ledger, "offboard", inputs, approval_deadline_seconds=1)
    advance_saga(ledger, settings, saga_id)
    assert ledger.list_recoverable(pending_grace_seconds=300) == []  # waiting is not stuck
    time.sleep(1.5)
    report = sweep(ledger, lambda: Runner(ledger, catalog(), Services(settings)), pending_grace_seconds=300)
    assert report.finished == {str(saga_id): "rolled_back"}
    saga = ledger.get_saga(saga_id)
    assert saga.approval_decision is ApprovalDecision.REJECTED and saga.approval_by == "the approval deadline"
    assert saga.error is not None and saga.error.startswith(
        "rejected by the approval deadline: no answer within 1s"
    )
    assert world(sim, api) == before


def test_a_cancel_while_awaiting_approval_rolls_back(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare("offboard", sim, api)
    before = world(sim, api)
    saga_id = _start(ledger, "offboard", inputs)
    advance_saga(ledger, settings, saga_id)
    result = CliRunner().invoke(cli, ["cancel", str(saga_id)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ledger.get_saga(saga_id).status is SagaStatus.ROLLED_BACK
    assert world(sim, api) == before


def test_sagas_approve_runs_the_rest_of_a_saga_no_flow_run_waits_for(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare("offboard", sim, api)
    saga_id = _start(ledger, "offboard", inputs)
    advance_saga(ledger, settings, saga_id)
    shown = CliRunner().invoke(cli, ["show", str(saga_id)], catch_exceptions=False)
    assert "awaiting_approval" in shown.output and "answer due by" in shown.output
    result = CliRunner().invoke(
        cli, ["approve", str(saga_id), "--note", "ticket 7", "--by", "carol"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.COMPLETED and saga.approval_by == "carol"
    assert "approved" in result.output and "carol" in result.output
    again = CliRunner().invoke(cli, ["approve", str(saga_id), "--note", "twice"], catch_exceptions=False)
    assert again.exit_code == 2 and "not awaiting approval" in again.output


def test_the_kinds_that_ask_by_default_and_a_saga_that_asks_for_itself(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    asking = {k for k in catalog().kind_names if catalog().kind(k).asks_approval}
    assert asking == {"offboard", "rollback"}
    plain = _start(ledger, "offboard", prepare("offboard", sim, api), require_approval=False)
    assert advance_saga(ledger, settings, plain).status is SagaStatus.COMPLETED
    snap = _start(ledger, "snapshot", {"droplet_id": _fresh_droplet(sim)}, require_approval=True)
    saga = advance_saga(ledger, settings, snap)
    assert saga.status is SagaStatus.AWAITING_APPROVAL
    assert ledger.list_step_results(snap) == []  # its gate is before its first (and only) step


def _fresh_droplet(sim: httpx.Client) -> int:
    from tests.conftest import seed_droplet

    return seed_droplet(sim, "web-2")
