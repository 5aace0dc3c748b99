"""The snapshot step against the simulator over loopback, run by the core runner on real Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sagas.errors import SagaBusyError
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus, StepResult
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import REPO, fail_snapshot_deletes, live_snapshots, seed_droplet, wait_for

_open: list[Services] = []


def runner(ledger: Ledger, settings: Settings) -> Runner:
    services = Services(settings)
    _open.append(services)
    return Runner(ledger, catalog(), services)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def start(ledger: Ledger, kind: str, inputs: dict[str, Any], steps: list[str] | None = None) -> uuid.UUID:
    saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, steps=steps))
    return saga.id


def steps_of(ledger: Ledger, saga_id: uuid.UUID) -> dict[str, StepResult]:
    return {s.step_name: s for s in ledger.list_step_results(saga_id)}


def writes(sim: httpx.Client, name: str) -> int:
    return int(sim.get("/_sim/state").json()["counters"]["writes"].get(f"snapshot:{name}", 0))


def test_snapshot_saga_completes_with_one_named_snapshot(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    name = f"arcadia-snap-{droplet}-{saga_id.hex[:8]}"
    [snapshot] = live_snapshots(sim)
    assert snapshot["name"] == name
    step = steps_of(ledger, saga_id)["create_droplet_snapshot"]
    assert step.idempotency_key == name
    assert str(step.output["snapshot_id"]) == str(snapshot["id"])
    assert saga.context["create_droplet_snapshot"]["snapshot_name"] == name


def test_a_snapshot_saga_on_the_common_path_makes_exactly_three_requests(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    """No POST was ever recorded, so no snapshot of this saga's name can exist: nothing is read
    before the POST. One action poll finds it done and one listing finds the snapshot (the action
    is instant and there is no listing lag here: the first poll of each is the one that finds it)."""
    sim.post(
        "/_sim/config", json={"action_seconds_by_type": {"snapshot": 0}, "snapshot_listing_lag_seconds": 0}
    ).raise_for_status()
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    since = sim.get("/_sim/requests").json()["last_seq"]
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    made = sim.get("/_sim/requests", params={"since": since}).json()["requests"]
    action_id = saga.context["create_droplet_snapshot"]["action_id"]
    assert [(r["method"], r["path"], r["status"]) for r in made] == [
        ("POST", f"/v2/droplets/{droplet}/actions", 201),
        ("GET", f"/v2/actions/{action_id}", 200),
        ("GET", f"/v2/droplets/{droplet}/snapshots", 200),
    ]


def test_seed_smoke_rolls_back_and_leaves_nothing(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "fail"])
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK
    assert {n: s.status.value for n, s in steps_of(ledger, saga_id).items()} == {
        "create_droplet_snapshot": "compensated",
        "fail": "failed",
    }
    assert live_snapshots(sim) == []


def test_listing_lag_and_deletion_linger_are_handled(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    # 25 s of lag each way at time scale 0.02: half a second of wall time.
    sim.post("/_sim/config", json={"snapshot_listing_lag_seconds": 25, "snapshot_delete_linger_seconds": 25})
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "fail"])
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    step = steps_of(ledger, saga_id)["create_droplet_snapshot"]
    assert step.output["snapshot_id"]  # found despite the lag
    assert live_snapshots(sim) == []  # deleted, though the listing may still show it for a moment
    listing = sim.get("/_sim/state").json()["snapshots"]
    assert [s["deleted"] for s in listing] == [True]


def test_lost_response_is_adopted_not_reposted(sim: httpx.Client, ledger: Ledger, settings: Settings) -> None:
    droplet = seed_droplet(sim)
    sim.post(
        "/_sim/faults",
        json={
            "rules": [
                {"method": "POST", "path": f"^/v2/droplets/{droplet}/actions$", "kind": "lose_response"}
            ]
        },
    ).raise_for_status()
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    name = f"arcadia-snap-{droplet}-{saga_id.hex[:8]}"
    assert writes(sim, name) == 1
    assert [s["name"] for s in live_snapshots(sim)] == [name]
    assert steps_of(ledger, saga_id)["create_droplet_snapshot"].output["action_adopted"] is True


def _neighbour_snapshot(api: httpx.Client, droplet: int) -> int:
    """Someone else (another tool, a person in the control panel) snapshots the droplet."""
    response = api.post(
        f"/v2/droplets/{droplet}/actions", json={"type": "snapshot", "name": "by-a-neighbour"}
    )
    response.raise_for_status()
    return int(response.json()["action"]["id"])


def _action_done(api: httpx.Client, action_id: int) -> bool:
    return bool(api.get(f"/v2/actions/{action_id}").json()["action"]["status"] == "completed")


def _snapshot_actions(sim: httpx.Client) -> list[int]:
    return [a["id"] for a in sim.get("/_sim/state").json()["actions"] if a["type"] == "snapshot"]


def test_a_neighbours_snapshot_that_finished_just_before_our_lost_post_is_not_adopted(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    """A snapshot action of the same droplet, by someone else, completes; at once our POST is
    applied and its answer lost. Nothing was read before our POST, so the two actions differ only in
    what they made: ours is the action during which the snapshot with our name was stamped."""
    # A second of wall time per snapshot action: whole-second timestamps can tell the two apart.
    sim.post("/_sim/config", json={"action_seconds_by_type": {"snapshot": 50}}).raise_for_status()
    droplet = seed_droplet(sim)
    neighbours = _neighbour_snapshot(api, droplet)
    wait_for(lambda: _action_done(api, neighbours), what="the neighbour's snapshot to finish")
    sim.post(
        "/_sim/faults",
        json={"method": "POST", "path": f"^/v2/droplets/{droplet}/actions$", "kind": "lose_response"},
    ).raise_for_status()
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    name = f"arcadia-snap-{droplet}-{saga_id.hex[:8]}"
    assert writes(sim, name) == 1
    assert sorted(s["name"] for s in live_snapshots(sim)) == sorted([name, "by-a-neighbour"])
    [ours] = [a for a in _snapshot_actions(sim) if a != neighbours]
    output = steps_of(ledger, saga_id)["create_droplet_snapshot"].output
    assert output["action_id"] == ours
    assert output["action_adopted"] is True


@pytest.mark.parametrize(
    "fault, neighbour_finishes_first",
    [
        # Our POST arrives while the neighbour's snapshot runs: refused (422), and the refusal lost.
        ("lose_response", False),
        # The neighbour's snapshot has just finished; our POST is not applied, and answered 500.
        ("error_500", True),
    ],
)
def test_a_neighbours_snapshot_started_just_before_our_unanswered_post_is_never_adopted(
    sim: httpx.Client,
    api: httpx.Client,
    ledger: Ledger,
    settings: Settings,
    fault: str,
    neighbour_finishes_first: bool,
) -> None:
    """Our POST went unanswered and did not land; the only snapshot action since is a neighbour's,
    of the same type, started just before. Adopting it would wait for a snapshot of our name that
    never comes: the saga must see that what it made bears another name, post again, and end with
    its own one snapshot."""
    sim.post("/_sim/config", json={"action_seconds_by_type": {"snapshot": 25}}).raise_for_status()  # 0.5 s
    droplet = seed_droplet(sim)
    neighbours = _neighbour_snapshot(api, droplet)
    if neighbour_finishes_first:
        wait_for(lambda: _action_done(api, neighbours), what="the neighbour's snapshot to finish")
    sim.post(
        "/_sim/faults", json={"method": "POST", "path": f"^/v2/droplets/{droplet}/actions$", "kind": fault}
    ).raise_for_status()
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    name = f"arcadia-snap-{droplet}-{saga_id.hex[:8]}"
    assert writes(sim, name) == 1
    assert sorted(s["name"] for s in live_snapshots(sim)) == sorted([name, "by-a-neighbour"])
    [ours] = [a for a in _snapshot_actions(sim) if a != neighbours]
    output = steps_of(ledger, saga_id)["create_droplet_snapshot"].output
    assert output["action_id"] == ours  # posted again after the neighbour's was told apart
    assert not output.get("action_adopted")


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_between_post_and_ledger_write_then_resume_adopts(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    # The POST is applied at once, but its response takes 30 s: the runner is killed in between.
    sim.post(
        "/_sim/faults",
        json={
            "rules": [
                {
                    "method": "POST",
                    "path": f"^/v2/droplets/{droplet}/actions$",
                    "kind": "slow_response",
                    "seconds": 30,
                }
            ]
        },
    ).raise_for_status()
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    name = f"arcadia-snap-{droplet}-{saga_id.hex[:8]}"
    proc = _cli("resume", str(saga_id))
    try:
        wait_for(lambda: writes(sim, name) == 1, what="the snapshot POST to be applied")
        assert "action_id" not in steps_of(ledger, saga_id)["create_droplet_snapshot"].output
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=10)
    sim.delete("/_sim/faults")
    with pytest.raises(SagaBusyError):  # the dead runner's lease has not expired yet
        runner(ledger, settings).advance(saga_id)
    wait_for(lambda: _lease_expired(ledger, saga_id), timeout=10, what="the lease to expire")
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert writes(sim, name) == 1
    assert [s["name"] for s in live_snapshots(sim)] == [name]


def _lease_expired(ledger: Ledger, saga_id: uuid.UUID) -> bool:
    try:
        lease = ledger.claim(saga_id, 5)
    except SagaBusyError:
        return False
    ledger.release(lease)
    return True


def test_killed_runner_is_finished_by_resume_after_the_lease(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 150})  # 3 s of wall time
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "noop"])
    proc = _cli("resume", str(saga_id))
    try:
        wait_for(
            lambda: "action_id" in steps_of(ledger, saga_id).get("create_droplet_snapshot", _NO_STEP).output,
            what="the action id to be recorded",
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=10)
    wait_for(lambda: _lease_expired(ledger, saga_id), timeout=10, what="the lease to expire")
    done = _cli("resume", str(saga_id))
    stdout, stderr = done.communicate(timeout=60)
    assert done.returncode == 0, stdout + stderr
    assert "completed" in stdout
    saga = ledger.get_saga(saga_id)
    assert saga.status is SagaStatus.COMPLETED
    name = f"arcadia-snap-{droplet}-{saga_id.hex[:8]}"
    assert writes(sim, name) == 1
    assert len(live_snapshots(sim)) == 1


class _NoStep:
    output: dict[str, Any] = {}


_NO_STEP = _NoStep()


def test_a_pending_event_is_waited_out_and_the_snapshot_taken_once(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    sim.post("/_sim/config", json={"action_seconds_by_type": {"reboot": 25}}).raise_for_status()  # 0.5 s
    droplet = seed_droplet(sim)
    api.post(f"/v2/droplets/{droplet}/actions", json={"type": "reboot"}).raise_for_status()
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    counters = sim.get("/_sim/state").json()["counters"]
    assert counters["statuses"].get("422", 0) >= 1  # the snapshot POST did meet the reboot
    assert counters["writes"][f"snapshot:arcadia-snap-{droplet}-{saga_id.hex[:8]}"] == 1


def test_a_pending_event_outlasting_the_wait_fails_the_step_and_posts_nothing(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    # The reboot lasts 10 s of wall time; the action timeout (20 s) would outwait it, the pending
    # event wait (0.3 s) must not.
    sim.post("/_sim/config", json={"action_seconds_by_type": {"reboot": 500}}).raise_for_status()
    droplet = seed_droplet(sim)
    api.post(f"/v2/droplets/{droplet}/actions", json={"type": "reboot"}).raise_for_status()
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    short = settings.model_copy(update={"pending_event_wait_seconds": 0.3})
    started = time.monotonic()
    saga = runner(ledger, short).advance(saga_id)
    assert time.monotonic() - started < 8.0
    assert saga.status is not SagaStatus.COMPLETED
    assert "pending event" in (saga.error or "")
    counters = sim.get("/_sim/state").json()["counters"]
    assert counters["statuses"].get("422", 0) >= 2  # waited and tried again before giving up
    assert not any(key.startswith("snapshot:") for key in counters["writes"])
    assert live_snapshots(sim) == []


def test_cancel_while_polling_rolls_back(sim: httpx.Client, ledger: Ledger, settings: Settings) -> None:
    sim.post("/_sim/config", json={"action_seconds": 100})  # 2 s of wall time
    droplet = seed_droplet(sim)
    saga_id = start(ledger, "snapshot", {"droplet_id": droplet})
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(runner(ledger, settings).advance(saga_id)))
    worker.start()
    wait_for(
        lambda: "action_id" in steps_of(ledger, saga_id).get("create_droplet_snapshot", _NO_STEP).output,
        what="polling to start",
    )
    ledger.request_cancel(saga_id)
    worker.join(60)
    [saga] = result
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert "cancelled" in (saga.error or "")
    step = steps_of(ledger, saga_id)["create_droplet_snapshot"]
    assert step.status.value == "failed" and step.compensated_at is not None  # cut short, then undone
    # The snapshot in flight when the cancel came was waited for and deleted: nothing left.
    assert live_snapshots(sim) == []


def test_compensation_failing_then_resume_finishes_rollback(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    fail_snapshot_deletes(sim)
    saga_id = start(ledger, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "fail"])
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.COMPENSATION_FAILED
    assert "compensation of create_droplet_snapshot failed" in (saga.error or "")
    assert "500" in (saga.error or "")
    step = steps_of(ledger, saga_id)["create_droplet_snapshot"]
    assert step.status.value == "compensation_failed" and step.error
    assert len(live_snapshots(sim)) == 1  # not dropped: still there, still in the ledger

    sim.delete("/_sim/faults")
    done = _cli("resume", str(saga_id))
    stdout, stderr = done.communicate(timeout=60)
    assert done.returncode == 1, stdout + stderr  # rolled back is not "completed"
    assert ledger.get_saga(saga_id).status is SagaStatus.ROLLED_BACK
    assert live_snapshots(sim) == []


def test_snapshot_already_gone_counts_as_undone(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    fail_snapshot_deletes(sim)
    saga_id = start(ledger, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "fail"])
    assert runner(ledger, settings).advance(saga_id).status is SagaStatus.COMPENSATION_FAILED
    sim.delete("/_sim/faults")
    [snapshot] = live_snapshots(sim)
    token = os.environ["SAGAS_DO_TOKEN"]
    gone = sim.delete(f"/v2/snapshots/{snapshot['id']}", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 204  # an operator deleted it by hand
    saga = runner(ledger, settings).advance(saga_id)
    assert saga.status is SagaStatus.ROLLED_BACK  # the undo's DELETE got 404: done, not failed
    assert live_snapshots(sim) == []
