"""The fleet spread over ``sagas worker`` processes, against the simulator's enforced rate limit.

- a fleet run on a real Prefect server and process worker plans one saga per droplet; three
  ``sagas worker`` processes run them within the rate limit (no 429), each saga once;
- a worker killed with kill -9 mid-fleet: another finishes its sagas once their leases expire,
  and no snapshot is made twice;
- the fleet's flow run killed mid-watch and retried (Prefect's Retry: the same flow run id) picks
  up where it was: the same sagas, none doubled.

The simulator runs 50x fast (a minute lasts 1.2 s) and enforces 40 requests a minute; the clients'
shared budget is told the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from sagas.context import Provisioning
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from tasks.registry import catalog
from tests.conftest import REPO, live_snapshots
from tests.prefect_live import LivePrefect, live_prefect, module_sagas_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

LIMIT = 40
RATE = {"SAGAS_DO_RATE_LIMIT_PER_MINUTE": str(LIMIT), "SAGAS_DO_RATE_WINDOW_SCALE": "0.02"}


@dataclass
class SagaWorker:
    proc: subprocess.Popen[bytes]
    log: Path
    out: IO[bytes]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ran(self, status: str = "completed") -> set[str]:
        """Ids of the sagas this worker reports ending in ``status``."""
        return {
            line.split()[2]
            for line in self.output().splitlines()
            if line.endswith(")") and f" {status} (" in line
        }


@pytest.fixture
def saga_workers(tmp_path: Path) -> Iterator[Any]:
    started: list[SagaWorker] = []

    def start(env: dict[str, str], queue: str, concurrency: int) -> SagaWorker:
        log = tmp_path / f"saga-worker-{len(started)}.log"
        out = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queue", queue, "--concurrency", str(concurrency),
             "--poll", "0.1", "--grace", "2"],
            cwd=REPO, env={**os.environ, **env, **RATE}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        worker = SagaWorker(proc, log, out)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        worker.out.close()


def tagged_droplets(sim: httpx.Client, tag: str, count: int) -> list[int]:
    return [
        int(sim.post("/_sim/droplets", json={"name": f"{tag}-{i}", "tags": [tag]}).json()["droplet"]["id"])
        for i in range(count)
    ]


def one_snapshot_each(sim: httpx.Client, droplets: list[int]) -> None:
    names = sorted(s["name"] for s in live_snapshots(sim))
    assert len(names) == len(set(names)) == len(droplets), names
    assert sorted(int(n.split("-")[2]) for n in names) == sorted(droplets)


# -- workers alone (no Prefect) ------------------------------------------------------------------


def test_a_killed_workers_sagas_are_finished_by_another_worker_and_none_twice(
    sim: httpx.Client, env: dict[str, str], ledger: Ledger, saga_workers: Any
) -> None:
    sim.post("/_sim/config", json={"rate_limit_per_minute": LIMIT, "action_seconds": 150}).raise_for_status()
    droplets = tagged_droplets(sim, "killed", 10)
    queue = Provisioning(ledger, catalog())
    sagas = [
        queue.create_saga("snapshot", {"droplet_id": d}, triggered_by="schedule:test", queue="night").id
        for d in droplets
    ]
    first = saga_workers(env, "night", 5)

    def running_under_first() -> list[uuid.UUID]:
        now = ledger.get_sagas(sagas).values()
        return [s.id for s in now if s.status is SagaStatus.RUNNING and s.lease_owner is not None]

    held = wait_until(lambda: len(running_under_first()) >= 3 and running_under_first(), "the first worker")
    os.killpg(first.proc.pid, signal.SIGKILL)  # kill -9: no grace, leases left to expire
    first.proc.wait(10)
    second = saga_workers(env, "night", 5)
    wait_until(
        lambda: all(s.status is SagaStatus.COMPLETED for s in ledger.get_sagas(sagas).values()),
        "every saga to complete",
    )
    assert {str(s) for s in held} <= second.ran(), second.output()  # what the dead worker held
    assert first.ran() | second.ran() == {str(s) for s in sagas}
    one_snapshot_each(sim, droplets)
    assert sim.get("/_sim/state").json()["counters"]["responses_429"] == 0


def test_sigterm_stops_a_worker_after_its_sagas_in_hand_end(
    sim: httpx.Client, env: dict[str, str], ledger: Ledger, saga_workers: Any
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 50}).raise_for_status()  # 1 s snapshots
    droplets = tagged_droplets(sim, "stopping", 3)
    queue = Provisioning(ledger, catalog())
    sagas = [queue.create_saga("snapshot", {"droplet_id": d}, queue="gentle").id for d in droplets]
    worker = saga_workers(env, "gentle", 3)
    wait_until(
        lambda: all(s.status is SagaStatus.RUNNING for s in ledger.get_sagas(sagas).values()),
        "the sagas to start",
    )
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.output()
    assert all(s.status is SagaStatus.COMPLETED for s in ledger.get_sagas(sagas).values()), worker.output()
    assert "worker stopped: 3 sagas ended (3 completed)" in worker.output()


# -- the fleet flow on Prefect -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_prefect(
    database_url: str, simulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LivePrefect]:
    """A real Prefect server + pool + deployments + process worker, whose flow runs know the rate."""
    root = tmp_path_factory.mktemp("fleet-prefect")
    sagas = {**module_sagas_env(database_url, simulator.base_url, root / "sagas-home"), **RATE}
    with live_prefect(database_url, sagas, root / "prefect-home") as live:
        yield live


def test_a_fleet_runs_through_three_worker_processes_within_the_rate_limit_each_saga_once(
    fleet_prefect: LivePrefect, sim: httpx.Client, env: dict[str, str], ledger: Ledger, saga_workers: Any
) -> None:
    sim.post("/_sim/config", json={"rate_limit_per_minute": LIMIT}).raise_for_status()
    droplets = tagged_droplets(sim, "fleet-three", 24)
    sim.post("/_sim/droplets", json={"name": "not-in-the-fleet"}).raise_for_status()
    workers = [saga_workers(env, "fleet", 4) for _ in range(3)]
    run = fleet_prefect.run_deployment("fleet-snapshot/fleet-snapshot", {"tag": "fleet-three"}, timeout=240)
    assert run.state.type.value == "COMPLETED", fleet_prefect.worker_log()
    sagas = ledger.list_queued_by(run.id)
    assert len(sagas) == 24 and {s.status for s in sagas} == {SagaStatus.COMPLETED}
    assert {s.queue for s in sagas} == {"fleet"} and {s.triggered_by for s in sagas} == {
        "schedule:fleet-snapshot"
    }
    ran = [w.ran() for w in workers]
    assert all(ran), [w.output() for w in workers]  # every worker took part
    assert sum(len(r) for r in ran) == 24 and set().union(*ran) == {str(s.id) for s in sagas}  # each once
    one_snapshot_each(sim, droplets)
    assert sim.get("/_sim/state").json()["counters"]["responses_429"] == 0
    with fleet_prefect.client() as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        [progress] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fleet-progress-fleet-three"]))
        )
    assert progress.data == 100.0
    assert progress.description == "24 done, 0 rolled back, 0 failed, 0 running, 0 waiting, of 24 droplets"


def test_a_killed_fleet_run_retried_picks_up_where_it_was_and_doubles_no_saga(
    fleet_prefect: LivePrefect, sim: httpx.Client, env: dict[str, str], ledger: Ledger, saga_workers: Any
) -> None:
    from prefect.states import AwaitingRetry

    sim.post("/_sim/config", json={"rate_limit_per_minute": LIMIT, "action_seconds": 100}).raise_for_status()
    droplets = tagged_droplets(sim, "fleet-retried", 12)
    saga_workers(env, "retried", 2)  # slow on purpose: the kill comes mid-fleet
    run = fleet_prefect.run_deployment(
        "fleet-snapshot/fleet-snapshot", {"tag": "fleet-retried", "queue": "retried"}, timeout=0
    )

    def progress() -> list[Any]:
        return ledger.list_queued_by(run.id)

    wait_until(
        lambda: len(progress()) == 12 and sum(s.status is SagaStatus.COMPLETED for s in progress()) >= 2,
        "the fleet to be planned and under way",
    )
    with fleet_prefect.client() as client:
        artifacts = client.read_artifacts()
    assert any(a.key == "fleet-progress-fleet-retried" and "ETA" in (a.description or "") for a in artifacts)
    fleet_prefect.kill_worker(signal.SIGKILL, with_flow_runs=True)  # the host of the fleet's flow run dies
    planned = {s.id for s in progress()}
    unfinished = [s for s in progress() if s.status is not SagaStatus.COMPLETED]
    assert unfinished, "the fleet finished before the kill: nothing to pick up"

    fleet_prefect.start_worker()
    with fleet_prefect.client() as client:
        client.set_flow_run_state(run.id, AwaitingRetry(), force=True)  # the UI's Retry
    again = fleet_prefect.wait_for_flow_run(run.id, timeout=240)
    assert again.state.type.value == "COMPLETED", fleet_prefect.worker_log()
    assert again.run_count >= 2
    sagas = progress()
    assert {s.id for s in sagas} == planned and len(sagas) == 12  # the same sagas: none doubled
    assert {s.status for s in sagas} == {SagaStatus.COMPLETED}
    one_snapshot_each(sim, droplets)
