"""Operator tools end to end: the CLI (typer's runner) on real Postgres and the simulator over loopback.

Every way out of every status in docs/runbook.md is exercised here or in the test it names.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from app.cli import cli as app
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import MECHANICS, fail_snapshot_deletes, live_snapshots, seed_droplet, wait_for

cli = CliRunner()
_open: list[Services] = []


@pytest.fixture(autouse=True)
def _clean(ledger: Ledger) -> Iterator[None]:
    with ledger._engine.begin() as conn:
        conn.execute(text("TRUNCATE operator_actions"))
    yield
    while _open:
        _open.pop().close()


def run_cli(*args: str, input: str | None = None) -> Any:
    return cli.invoke(app, list(args), input=input, catch_exceptions=False)


def runner(ledger: Ledger, settings: Settings) -> Runner:
    services = Services(settings)
    _open.append(services)
    return Runner(ledger, catalog(), services)


def start(ledger: Ledger, kind: str, inputs: dict[str, Any], steps: list[str] | None = None) -> uuid.UUID:
    saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, steps=steps, options=MECHANICS))
    return saga.id


def compensation_failed_saga(
    sim: httpx.Client, ledger: Ledger, settings: Settings, droplet: int
) -> uuid.UUID:
    """A [create_droplet_snapshot, fail] saga whose snapshot cannot be deleted: compensation_failed."""
    fail_snapshot_deletes(sim)
    saga_id = start(ledger, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "fail"])
    assert runner(ledger, settings).advance(saga_id).status is SagaStatus.COMPENSATION_FAILED
    return saga_id


def counts(ledger: Ledger) -> dict[str, int]:
    tables = ("saga_runs", "saga_step_results", "saga_resource_locks", "operator_actions")
    with ledger._engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


def actions(ledger: Ledger) -> list[Any]:
    return list(reversed(ledger.list_operator_actions()))


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['SAGAS_DO_TOKEN']}"}


# -- plan --------------------------------------------------------------------------------------


def test_plan_writes_nothing_and_shows_the_names(sim: httpx.Client, ledger: Ledger) -> None:
    droplet = seed_droplet(sim)
    start(ledger, "test", {}, ["noop"])  # something in the ledger, to see that it stays as it is
    rows_before = counts(ledger)
    sim_before = sim.get("/_sim/state").json()

    result = run_cli("plan", "snapshot", "--inputs", json.dumps({"droplet_id": droplet}))
    assert result.exit_code == 0, result.output
    [name] = re.findall(rf"arcadia-snap-{droplet}-[0-9a-f]{{8}}\b", result.output)
    placeholder = re.search(r"placeholder saga id ([0-9a-f-]{36})", result.output)
    assert placeholder and name.endswith(uuid.UUID(placeholder.group(1)).hex[:8])
    assert "compensatable" in result.output and "delete that snapshot" in result.output

    as_json = run_cli(
        "plan",
        "test",
        "--steps",
        "create_droplet_snapshot,fail",
        "--inputs",
        f'{{"droplet_id": {droplet}}}',
        "--json",
    )
    assert as_json.exit_code == 0, as_json.output
    planned = json.loads(as_json.output)
    saga8 = uuid.UUID(planned["placeholder_saga_id"]).hex[:8]
    assert [(s["name"], s["reversibility"]) for s in planned["steps"]] == [
        ("create_droplet_snapshot", "compensatable"),
        ("fail", "compensatable"),
    ]
    assert planned["steps"][0]["idempotency_key"] == f"arcadia-snap-{droplet}-{saga8}"
    assert planned["steps"][0]["compensation"].startswith("delete that snapshot")
    assert planned["resource"] == f"droplet:{droplet}"

    assert counts(ledger) == rows_before
    sim_after = sim.get("/_sim/state").json()
    assert sim_after["counters"] == sim_before["counters"]  # not one request reached the provider
    assert sim_after["snapshots"] == sim_before["snapshots"] == []
    assert sim_after["actions"] == sim_before["actions"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "provisionn"], "unknown saga kind 'provisionn'"),
        (["plan", "snapshot", "--inputs", '{"droplet_id": "x"}'], "droplet_id"),
        (["plan", "snapshot", "--inputs", "[1]"], "JSON object"),
        (["plan", "test", "--steps", "os.system"], "unknown step 'os.system'"),
    ],
)
def test_plan_rejects_bad_input(ledger: Ledger, args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


# -- show / list -------------------------------------------------------------------------------


def test_show_and_list_give_steps_keys_resource_ids_and_timings(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    assert runner(ledger, settings).advance(saga_id).status is SagaStatus.COMPLETED
    [snapshot] = live_snapshots(sim)

    shown = run_cli("show", str(saga_id))
    assert shown.exit_code == 0, shown.output
    for expected in (
        f"arcadia-snap-{droplet}-{saga_id.hex[:8]}",
        f"snapshot_id={snapshot['id']}",
        "prefect flow run",
        "completed",
        "ran ",
    ):
        assert expected in shown.output
    data = json.loads(run_cli("show", str(saga_id), "--json").output)
    [step] = data["steps"]
    assert step["resource_ids"]["snapshot_id"] == str(snapshot["id"])
    assert step["attempts"] == 1 and step["started_at"] and step["completed_at"]
    assert data["flow_run_id"] is None and data["status"] == "completed"

    listed = run_cli("list")
    assert listed.exit_code == 0 and str(saga_id) in listed.output
    [row] = json.loads(run_cli("list", "--json", "--status", "completed").output)
    assert row["id"] == str(saga_id) and row["resolved_by"] is None


# -- resolve -----------------------------------------------------------------------------------


def test_resolve_is_recorded_terminal_and_frees_the_resource(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    saga_id = compensation_failed_saga(sim, ledger, settings, droplet)
    assert ledger.resource_holder(f"droplet:{droplet}") == saga_id

    result = run_cli(
        "resolve", str(saga_id), "--note", "deleted the snapshot in the console", "--by", "alice"
    )
    assert result.exit_code == 0, result.output
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.RESOLVED and saga.status.is_terminal
    assert (saga.resolved_by, saga.resolution_note) == ("alice", "deleted the snapshot in the console")
    assert saga.resolved_at is not None and saga.finished_at is not None
    assert saga.lease_owner is None
    assert ledger.resource_holder(f"droplet:{droplet}") is None
    [action] = actions(ledger)
    assert (action.action, action.target, action.performed_by) == ("resolve", f"saga:{saga_id}", "alice")
    assert action.detail["previous_status"] == "compensation_failed"
    assert action.detail["released"] == [f"droplet:{droplet}"]

    # Terminal: resume does nothing (no claim, no write) and says so; resolve again is refused.
    steps_before = ledger.list_step_results(saga_id)
    resumed = run_cli("resume", str(saga_id))
    assert resumed.exit_code == 1
    assert "already resolved: nothing to resume" in resumed.output
    assert ledger.get_saga(saga_id) == saga
    assert ledger.list_step_results(saga_id) == steps_before
    again = run_cli("resolve", str(saga_id), "--note", "twice")
    assert again.exit_code == 2 and "already resolved" in again.output
    assert "resolved" in run_cli("show", str(saga_id)).output


def test_resolve_refuses_finished_sagas_empty_notes_and_busy_sagas(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    done = start(ledger, "test", {}, ["noop"])
    assert runner(ledger, settings).advance(done).status is SagaStatus.COMPLETED
    refused = run_cli("resolve", str(done), "--note", "oops")
    assert refused.exit_code == 2
    assert f"saga {done} is already completed" in refused.output
    assert ledger.get_saga(done).status is SagaStatus.COMPLETED

    stuck = start(ledger, "test", {}, ["noop"])
    for note in ("", "   "):
        empty = run_cli("resolve", str(stuck), "--note", note)
        assert empty.exit_code == 2 and "--note is required" in empty.output
    missing = cli.invoke(app, ["resolve", str(stuck)])
    assert missing.exit_code == 2 and "--note" in missing.output

    lease = ledger.claim(stuck, 30)  # a live runner holds it
    try:
        busy = run_cli("resolve", str(stuck), "--note", "fixed")
        assert busy.exit_code == 3 and "busy" in busy.output
    finally:
        ledger.release(lease)
    assert ledger.get_saga(stuck).status is SagaStatus.PENDING
    assert actions(ledger) == []


def test_the_database_refuses_a_silent_resolution(ledger: Ledger) -> None:
    saga_id = start(ledger, "test", {}, ["noop"])
    with pytest.raises(IntegrityError, match="saga_runs_resolution_recorded"), ledger._engine.begin() as conn:
        conn.execute(text("UPDATE saga_runs SET status = 'resolved' WHERE id = :id"), {"id": saga_id})


# -- retry-compensation ------------------------------------------------------------------------


def test_retry_compensation_finishes_the_rollback_once_the_fault_clears(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    saga_id = compensation_failed_saga(sim, ledger, settings, droplet)
    assert len(live_snapshots(sim)) == 1

    still = run_cli("retry-compensation", str(saga_id), "--by", "bob")  # the fault is still there
    assert still.exit_code == 1, still.output
    assert ledger.get_saga(saga_id).status is SagaStatus.COMPENSATION_FAILED
    assert len(live_snapshots(sim)) == 1

    sim.delete("/_sim/faults")
    done = run_cli("retry-compensation", str(saga_id), "--by", "bob")
    assert done.exit_code == 0, done.output
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK
    assert {s.step_name: s.status.value for s in ledger.list_step_results(saga_id)} == {
        "create_droplet_snapshot": "compensated",
        "fail": "failed",
    }
    assert live_snapshots(sim) == []
    assert ledger.resource_holder(f"droplet:{droplet}") is None
    assert [(a.action, a.detail["outcome"], a.performed_by) for a in actions(ledger)] == [
        ("retry_compensation", "compensation_failed", "bob"),
        ("retry_compensation", "rolled_back", "bob"),
    ]

    refused = run_cli("retry-compensation", str(saga_id))
    assert refused.exit_code == 2
    assert "is rolled_back, not compensation_failed" in refused.output


def test_retry_compensation_refuses_other_statuses(ledger: Ledger) -> None:
    saga_id = start(ledger, "test", {}, ["noop"])
    result = run_cli("retry-compensation", str(saga_id))
    assert result.exit_code == 2
    assert "is pending, not compensation_failed" in result.output
    assert f"sagas resume {saga_id}" in result.output
    assert ledger.get_saga(saga_id).status is SagaStatus.PENDING


# -- orphans -----------------------------------------------------------------------------------


def make_snapshot_outside_sagas(sim: httpx.Client, droplet: int, name: str) -> None:
    response = sim.post(
        f"/v2/droplets/{droplet}/actions", json={"type": "snapshot", "name": name}, headers=bearer()
    )
    assert response.status_code == 201, response.text
    wait_for(
        lambda: any(s["name"] == name and s["listed"] for s in sim.get("/_sim/state").json()["snapshots"]),
        what=f"snapshot {name} to be listed",
    )


def test_orphans_lists_and_deletes_what_no_saga_owns(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    kept = start(ledger, "snapshot", {"droplet_id": droplet})  # completed: owns its snapshot
    assert runner(ledger, settings).advance(kept).status is SagaStatus.COMPLETED
    resolved = compensation_failed_saga(sim, ledger, settings, droplet)
    sim.delete("/_sim/faults")
    assert run_cli("resolve", str(resolved), "--note", "will clean up with sagas orphans").exit_code == 0
    stray = f"arcadia-snap-{droplet}-0badf00d"  # saga-like, but no saga ever made it
    make_snapshot_outside_sagas(sim, droplet, stray)
    names = {s["name"]: str(s["id"]) for s in live_snapshots(sim)}
    kept_name = f"arcadia-snap-{droplet}-{kept.hex[:8]}"
    resolved_name = f"arcadia-snap-{droplet}-{resolved.hex[:8]}"
    assert set(names) == {kept_name, resolved_name, stray}

    listed = run_cli("orphans", "--json")
    assert listed.exit_code == 1, listed.output  # orphans remain
    found = {o["name"]: o for o in json.loads(listed.output)["orphans"]}
    assert set(found) == {resolved_name, stray}
    assert found[resolved_name]["saga_id"] == str(resolved)
    assert found[resolved_name]["saga_status"] == "resolved"
    assert "resolved by hand" in found[resolved_name]["reason"]
    assert found[stray]["saga_id"] is None and "no saga recorded it" in found[stray]["reason"]
    assert "no saga recorded it" in run_cli("orphans").output

    declined = run_cli("orphans", "--delete", input="n\n")
    assert declined.exit_code == 1 and "nothing deleted" in declined.output
    assert len(live_snapshots(sim)) == 3 and actions(ledger)[-1].action == "resolve"

    deleted = run_cli("orphans", "--delete", "--yes", "--by", "carol")
    assert deleted.exit_code == 0, deleted.output
    assert f"snapshot:{names[stray]} {stray}: deleted" in deleted.output
    assert [s["name"] for s in live_snapshots(sim)] == [kept_name]
    recorded = {a.target: a for a in actions(ledger) if a.action == "delete_orphan_snapshot"}
    assert set(recorded) == {f"snapshot:{names[resolved_name]}", f"snapshot:{names[stray]}"}
    for action in recorded.values():
        assert action.detail["outcome"] == "deleted" and action.performed_by == "carol"
    assert recorded[f"snapshot:{names[resolved_name]}"].detail["saga_id"] == str(resolved)

    # Right after the deletes the listing still shows them (linger); they are not reported again.
    again = run_cli("orphans")
    assert again.exit_code == 0, again.output
    assert "no orphans" in again.output


def test_orphan_droplets_are_tagged_for_a_saga_that_does_not_own_them(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    unfinished = start(ledger, "test", {}, ["noop"])  # pending: still owns what it tagged
    ghost = uuid.uuid4()
    owned = sim.post("/_sim/droplets", json={"name": "web-owned", "tags": [f"saga-{unfinished}"]}).json()
    lost = sim.post("/_sim/droplets", json={"name": "web-lost", "tags": [f"saga-{ghost}", "prod"]}).json()
    seed_droplet(sim, "untagged")

    listed = run_cli("orphans", "--json")
    assert listed.exit_code == 1, listed.output
    [orphan] = json.loads(listed.output)["orphans"]
    assert (orphan["kind"], orphan["id"]) == ("droplet", str(lost["droplet"]["id"]))
    assert orphan["saga_id"] == str(ghost) and "does not know" in orphan["reason"]

    deleted = run_cli("orphans", "--delete", "--yes", "--json")
    assert deleted.exit_code == 0, deleted.output
    [deletion] = json.loads(deleted.output)["deletions"]
    assert deletion["outcome"] == "deleted" and deletion["action"]["action"] == "delete_orphan_droplet"
    state = {d["id"]: d for d in sim.get("/_sim/state").json()["droplets"]}
    assert state[lost["droplet"]["id"]]["deleted"] is True
    assert state[owned["droplet"]["id"]]["deleted"] is False


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["show"],
        ["resume"],
        ["cancel"],
        ["retry-compensation"],
        ["resolve", "--note", "fixed by hand"],
    ],
)
def test_malformed_and_unknown_ids(ledger: Ledger, command: list[str]) -> None:
    name, *options = command
    malformed = run_cli(name, "not-a-uuid", *options)
    assert malformed.exit_code == 2, malformed.output
    assert "'not-a-uuid' is not a saga id" in malformed.output
    unknown = uuid.uuid4()
    missing = run_cli(name, str(unknown), *options)
    assert missing.exit_code == 4, missing.output
    assert f"no saga with id {unknown}" in missing.output
    assert counts(ledger)["operator_actions"] == 0


# -- the runbook: every status has a way out ---------------------------------------------------


def held_by_a_dead_runner(ledger: Ledger, saga_id: uuid.UUID, status: SagaStatus) -> None:
    """Leave the saga in ``status`` with a short lease that nobody renews (a killed runner)."""
    lease = ledger.claim(saga_id, 0.5)
    if status is SagaStatus.COMPENSATING:
        ledger.record_step_started(lease, 0, "noop", f"arcadia-noop-{saga_id.hex}")
        ledger.record_step_completed(lease, 0, "noop", {})
    ledger.set_saga_status(
        lease, status, error="the runner died" if status is SagaStatus.COMPENSATING else None
    )


def test_runbook_pending_resume_completes_and_cancel_rolls_back(ledger: Ledger) -> None:
    first = start(ledger, "test", {}, ["noop"])
    assert run_cli("resume", str(first)).exit_code == 0
    assert ledger.get_saga(first).status is SagaStatus.COMPLETED
    second = start(ledger, "test", {}, ["noop"])
    assert run_cli("cancel", str(second)).exit_code == 0
    assert ledger.get_saga(second).status is SagaStatus.ROLLED_BACK


@pytest.mark.parametrize(
    ("stuck", "final", "code"),
    [(SagaStatus.RUNNING, SagaStatus.COMPLETED, 0), (SagaStatus.COMPENSATING, SagaStatus.ROLLED_BACK, 1)],
)
def test_runbook_a_dead_runners_saga_is_busy_then_resumed(
    ledger: Ledger, stuck: SagaStatus, final: SagaStatus, code: int
) -> None:
    saga_id = start(ledger, "test", {}, ["noop"])
    held_by_a_dead_runner(ledger, saga_id, stuck)
    busy = run_cli("resume", str(saga_id))
    assert busy.exit_code == 3 and "busy" in busy.output
    time.sleep(0.6)
    done = run_cli("resume", str(saga_id))
    assert done.exit_code == code, done.output
    assert ledger.get_saga(saga_id).status is final


def test_runbook_failed_is_resumed_forward_or_resolved(ledger: Ledger) -> None:
    retried = start(ledger, "test", {}, ["noop"])
    lease = ledger.claim(retried, 30)
    ledger.set_saga_status(lease, SagaStatus.FAILED, error="step noop failed after the point of no return")
    ledger.release(lease)
    assert run_cli("resume", str(retried)).exit_code == 0
    assert ledger.get_saga(retried).status is SagaStatus.COMPLETED

    by_hand = start(ledger, "test", {}, ["noop"])
    lease = ledger.claim(by_hand, 30)
    ledger.set_saga_status(lease, SagaStatus.FAILED, error="stuck")
    ledger.release(lease)
    assert run_cli("resolve", str(by_hand), "--note", "finished by hand in the console").exit_code == 0
    assert ledger.get_saga(by_hand).status is SagaStatus.RESOLVED


def test_runbook_finished_sagas_are_left_alone(ledger: Ledger) -> None:
    saga_id = start(ledger, "test", {}, ["noop"])
    assert run_cli("resume", str(saga_id)).exit_code == 0
    before = ledger.get_saga(saga_id)
    again = run_cli("resume", str(saga_id))
    assert again.exit_code == 0 and "already completed: nothing to resume" in again.output
    cancelled = run_cli("cancel", str(saga_id))
    assert cancelled.exit_code == 0 and "nothing to cancel" in cancelled.output
    assert ledger.get_saga(saga_id).status is SagaStatus.COMPLETED
    assert ledger.get_saga(saga_id).finished_at == before.finished_at
