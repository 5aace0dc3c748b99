"""What a person sees of a saga in Prefect, on a real server and process worker (deploy --all).

- a cancel from the API: the rollback runs in the cancelled run's own process within the grace,
  as its own task runs; the run is Cancelled within seconds; its artifacts (one card per key) and
  the saga's event belong to it; its logs end with what became of the saga;
- a cancel during a pivot (offboard's delete, rollback's restore): the saga finishes forward and
  keeps what the steps before the pivot made (the worker SIGTERMs the run's process, as it does);
- a second submission of a saga follows the run that drives it and does not fail;
- Prefect's Retry of a failed run resumes its saga (compensation_failed) or replaces a rolled-back
  one with a new saga linked to it.
"""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from tests.conftest import fail_snapshot_deletes, live_snapshots, seed_droplet
from tests.prefect_live import LivePrefect, prefect_live_fixture  # noqa: F401
from tests.support.waiting import wait_until
from tests.test_kinds import prepare, world

pytestmark = pytest.mark.slow


def _saga_of(ledger: Ledger, run_id: uuid.UUID, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while (saga := ledger.find_saga_by_flow_run(run_id)) is None:
        assert time.monotonic() < deadline, "the run never recorded its saga"
        time.sleep(0.1)
    return saga


_wait_until = partial(wait_until, timeout=90)  # 90 s here unless a call says otherwise


def _cancel(prefect_live: LivePrefect, run_id: uuid.UUID) -> float:
    """Cancel as `prefect flow-run cancel` and the UI do; returns when it was asked."""
    from prefect.states import Cancelling

    with prefect_live.client() as client:
        client.set_flow_run_state(run_id, Cancelling())
    return time.monotonic()


def _task_runs(prefect_live: LivePrefect, run_id: uuid.UUID) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_live.client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {r.name: r.state.type.value if r.state else "" for r in runs}


def _artifacts(prefect_live: LivePrefect, run_id: uuid.UUID) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_live.client() as client:
        return list(
            client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        )


def _logs(prefect_live: LivePrefect, run_id: uuid.UUID) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with prefect_live.client() as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), sort=LogSort.TIMESTAMP_ASC
        )
    return [entry.message for entry in logs]


def _events(prefect_live: LivePrefect, resource_id: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=prefect_live.api_url, timeout=10) as prefect:
        page = prefect.post(
            "/events/filter",
            json={
                "filter": {"resource": {"id": [resource_id]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}
            },
        ).json()
    return list(page.get("events", []))


def test_a_cancel_from_the_api_is_rolled_back_in_the_run_and_its_page_says_what_happened(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 500}).raise_for_status()  # a 10 s snapshot
    run = prefect_live.run_deployment("snapshot/snapshot", {"droplet_id": seed_droplet(sim)}, timeout=0)
    saga = _saga_of(ledger, run.id)
    _wait_until(lambda: any("action_id" in s.output for s in ledger.list_step_results(saga.id)), "the action")
    asked = _cancel(prefect_live, run.id)
    final = prefect_live.wait_for_flow_run(run.id, timeout=60)
    took = time.monotonic() - asked
    assert final.state_type.value == "CANCELLED", (final.state, prefect_live.worker_log())
    assert took < 20, f"Cancelling -> Cancelled took {took:.1f} s"
    saga = ledger.get_saga(saga.id)
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert live_snapshots(sim) == []
    # The rollback ran as this run's own task runs.
    tasks = _task_runs(prefect_live, run.id)
    assert tasks.get("create_droplet_snapshot.compensate[0]") == "COMPLETED", tasks
    assert not any(state == "CRASHED" for state in tasks.values()), tasks
    # One card per key, on this run, saying how the saga ended.
    cards = _artifacts(prefect_live, run.id)
    keys = sorted(a.key for a in cards)
    assert keys == [f"saga-{saga.id}", f"saga-{saga.id}-timeline"], keys
    table = next(a for a in cards if a.key == f"saga-{saga.id}")
    assert "rolled back: 1 step undone, nothing left" in table.description
    assert "base64" not in (next(a for a in cards if a.key.endswith("timeline")).description or "")
    # The saga's event names this run.
    events = _wait_until(lambda: _events(prefect_live, f"arcadia.saga.{saga.id}"), "the saga's event")
    assert [e["event"] for e in events] == ["arcadia.saga.rolled_back"]
    related = {r["prefect.resource.id"] for r in events[0]["related"]}
    assert f"prefect.flow-run.{run.id}" in related
    # The run's logs end with what became of the saga (after the cancel's own lines).
    logs = _wait_until(
        lambda: (lines := _logs(prefect_live, run.id)) and "rolled back" in lines[-1] and lines,
        "the last word",
    )
    assert f"saga {str(saga.id)[:8]} rolled back: 1 step undone, nothing left" in logs[-1]
    assert not any("Crash detected" in line for line in logs), logs


@pytest.mark.parametrize("kind", ["offboard", "rollback"])
def test_a_cancel_during_a_pivot_on_a_worker_finishes_the_saga_forward_and_keeps_its_snapshot(
    kind: str, prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    inputs = prepare(kind, sim, api)
    # The pivot takes seconds: the delete lingers, the restore action runs long.
    sim.post(
        "/_sim/config",
        json={"droplet_delete_linger_seconds": 300, "action_seconds_by_type": {"restore": 300}},
    ).raise_for_status()
    run = prefect_live.run_deployment(f"{kind}/{kind}", {**inputs, "require_approval": False}, timeout=0)
    saga = _saga_of(ledger, run.id)
    pivot = "delete_droplet" if kind == "offboard" else "restore_droplet"
    _wait_until(
        lambda: any(s.step_name == pivot and s.write_started_at for s in ledger.list_step_results(saga.id)),
        f"{pivot} to send its write",
    )
    _cancel(prefect_live, run.id)
    final = prefect_live.wait_for_flow_run(run.id, timeout=90)
    assert final.state_type.value == "CANCELLED", (final.state, prefect_live.worker_log())
    saga = _wait_until(
        lambda: (s := ledger.get_saga(saga.id)).status.is_terminal and s, "the saga to end", timeout=120
    )
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert saga.cancel_requested
    kept = [s for s in live_snapshots(sim) if s["name"].startswith(f"arcadia-snap-{inputs['droplet_id']}-")]
    assert len(kept) == 1, world(sim, api)  # offboard's final snapshot, rollback's safety snapshot
    logs = _logs(prefect_live, run.id)
    assert any("past its point of no return, so it finished forward" in line for line in logs), logs


def test_a_second_submission_of_one_saga_follows_the_first_and_no_run_fails(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 250}).raise_for_status()
    saga_id = str(uuid.uuid4())
    parameters = {"droplet_id": seed_droplet(sim), "saga_id": saga_id}
    first = prefect_live.run_deployment("snapshot/snapshot", parameters, timeout=0)
    _saga_of(ledger, first.id)
    second = prefect_live.run_deployment("snapshot/snapshot", parameters, timeout=0)
    ends = [prefect_live.wait_for_flow_run(r.id, timeout=120) for r in (first, second)]
    assert [e.state_type.value for e in ends] == ["COMPLETED", "COMPLETED"], [e.state for e in ends]
    assert f"driven by flow run {first.id}" in (ends[1].state.message or "")
    assert len(ledger.list_sagas()) == 1
    assert len(live_snapshots(sim)) == 1


def _retry(prefect_live: LivePrefect, run_id: uuid.UUID) -> Any:
    """What the UI's Retry button does: AwaitingRetry on the failed run; the worker runs it again."""
    from prefect.states import AwaitingRetry

    with prefect_live.client() as client:
        client.set_flow_run_state(run_id, AwaitingRetry())
    deadline = time.monotonic() + 120
    with prefect_live.client() as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.run_count >= 2 and run.state is not None and run.state.is_final():
                return run
            assert time.monotonic() < deadline, prefect_live.worker_log()
            time.sleep(0.2)


def test_prefect_retry_of_a_run_whose_saga_rolled_back_starts_a_new_saga_linked_to_the_old(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    parameters = {"droplet_id": seed_droplet(sim), "steps": ["create_droplet_snapshot", "fail"]}
    run = prefect_live.run_deployment("test/test", parameters)
    assert run.state_type.value == "FAILED" and "rolled back" in (run.state.message or "")
    old = _saga_of(ledger, run.id)
    again = _retry(prefect_live, run.id)
    new = ledger.find_saga_by_flow_run(run.id)
    assert new is not None and new.id != old.id and new.retry_of == old.id
    assert new.status is SagaStatus.ROLLED_BACK  # the fail step fails again: rolled back again
    assert ledger.get_saga(old.id).status is SagaStatus.ROLLED_BACK
    assert again.state_type.value == "FAILED"
    # Logs reach the server in batches: wait for the line that names the old saga.
    _wait_until(
        lambda: any(
            f"saga {old.id} rolled back; this retry starts saga {new.id}" in line
            for line in _logs(prefect_live, run.id)
        ),
        "the retry's log line naming the old saga",
        timeout=30,
    )


def test_prefect_retry_of_a_run_whose_compensation_failed_finishes_that_rollback(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    fail_snapshot_deletes(sim)
    parameters = {"droplet_id": seed_droplet(sim), "steps": ["create_droplet_snapshot", "fail"]}
    run = prefect_live.run_deployment("test/test", parameters)
    assert "compensation_failed" in (run.state.message or ""), run.state
    saga = _saga_of(ledger, run.id)
    sim.delete("/_sim/faults").raise_for_status()  # the cause is fixed
    again = _retry(prefect_live, run.id)
    assert ledger.find_saga_by_flow_run(run.id).id == saga.id  # the same saga, not a stranger
    assert ledger.get_saga(saga.id).status is SagaStatus.ROLLED_BACK
    assert live_snapshots(sim) == []
    assert "rolled back" in (again.state.message or "")
