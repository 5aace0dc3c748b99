"""Racing runners: several runners (threads and ``sagas resume`` processes) on each of many sagas."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from sagas.errors import SagaBusyError
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import MECHANICS
from tests.reliability.harness.world import (
    DOMAIN,
    CaseResult,
    Sim,
    Verdict,
    advance_until_terminal,
    cli,
)


def racing_runners(
    sim: Sim,
    ledger: Ledger,
    settings: Settings,
    env: Mapping[str, str],
    count: int,
    *,
    threads_per_saga: int = 3,
    subprocesses: int = 2,
) -> list[CaseResult]:
    """Several runners on each of ``count`` sagas at once (threads, plus ``sagas resume`` processes
    on a few): one runs, the rest are told it is busy, and every provider write happens once."""
    started = time.monotonic()
    sim.reset()
    sim.control.post("/_sim/config", json={"action_seconds": 25}).raise_for_status()  # 0.5 s wall
    sim.control.post("/_sim/domains", json={"name": DOMAIN}).raise_for_status()
    sagas: list[tuple[uuid.UUID, dict[str, Any], str]] = []
    for i in range(count):
        if i % 3 == 2:
            inputs: dict[str, Any] = {
                "name": f"race-{i}",
                "region": "nyc3",
                "size": "s-1vcpu-1gb",
                "image": "debian-12-x64",
                "domain": DOMAIN,
                "hostname": f"race-{i}",
            }
            kind = "provision"
        else:
            droplet = int(
                sim.control.post("/_sim/droplets", json={"name": f"web-{i}"}).json()["droplet"]["id"]
            )
            inputs, kind = {"droplet_id": droplet}, ("suspend" if i % 3 else "snapshot")
        saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, options=MECHANICS))
        sagas.append((saga.id, inputs, kind))
    settings = settings.model_copy(update={"do_rate_window_scale": 0.02})
    outcomes: dict[uuid.UUID, list[str]] = {saga_id: [] for saga_id, _, _ in sagas}
    lock = threading.Lock()
    gate = threading.Barrier(len(sagas) * threads_per_saga)

    def runner(saga_id: uuid.UUID) -> None:
        services = Services(settings)
        try:
            gate.wait(30)
            Runner(ledger, catalog(), services).advance(saga_id)
            outcome = "ran"
        except SagaBusyError:
            outcome = "busy"
        except BaseException as exc:
            outcome = f"raised {type(exc).__name__}: {exc}"
        finally:
            services.close()
        with lock:
            outcomes[saga_id].append(outcome)

    procs = [cli(["resume", str(saga_id)], env) for saga_id, _, _ in sagas[:subprocesses]]
    threads = [
        threading.Thread(target=runner, args=(saga_id,), daemon=True)
        for saga_id, _, _ in sagas
        for _ in range(threads_per_saga)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        if proc.returncode not in (0, 3):  # 3: busy, wrote nothing
            with lock:
                outcomes[sagas[procs.index(proc)][0]].append(f"cli exited {proc.returncode}: {err[-300:]}")
    results = []
    writes = sim.writes()
    for saga_id, inputs, kind in sagas:
        saga = advance_until_terminal(ledger, settings, saga_id)
        problems = [o for o in outcomes[saga_id] if o not in ("ran", "busy")]
        if saga.status is not SagaStatus.COMPLETED:
            problems.append(f"ended {saga.status.value}: {saga.error}")
        wanted: list[str] = []
        if kind == "provision":
            wanted = [f"droplet:{inputs['name']}", f"dns:A:{inputs['hostname']}.{DOMAIN}"]
        else:
            wanted = [f"snapshot:arcadia-snap-{inputs['droplet_id']}-{saga_id.hex[:8]}"]
            if kind == "suspend":
                wanted.append(f"action:shutdown:{inputs['droplet_id']}")
        writes = sim.writes()
        for key in wanted:
            if writes.get(key, 0) != 1:
                problems.append(f"writes[{key}] = {writes.get(key, 0)}, want exactly 1")
        doubled = sum(1 for key in wanted if writes.get(key, 0) > 1)
        results.append(
            CaseResult(
                f"race {kind} {saga_id}",
                Verdict(not problems, doubled=doubled, detail="; ".join(problems)),
                time.monotonic() - started,
            )
        )
    return results
