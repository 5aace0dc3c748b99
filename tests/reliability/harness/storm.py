"""The fault storm: many sagas at once under a seeded mix of every fault the simulator knows."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.reliability.harness.world import (
    ACTIONS,
    DOMAIN,
    DROPLET,
    DROPLETS,
    RECORD,
    RECORDS,
    SNAPSHOT,
    CaseResult,
    Sim,
    Verdict,
    _diff,
    doubled_creates,
)

STORM_SHAPES: list[tuple[str, list[str] | None]] = [
    ("snapshot", None),
    ("suspend", None),
    ("update", None),
    ("provision", None),
    ("test", ["create_droplet_snapshot", "fail"]),
    ("test", ["create_droplet", "create_dns_record", "fail"]),
]


def storm_faults(rng: random.Random) -> list[dict[str, Any]]:
    """A seeded mix of every fault the simulator knows, each bounded so sagas can finish."""
    paths = [
        ACTIONS,
        DROPLETS,
        DROPLET,
        RECORDS,
        RECORD,
        SNAPSHOT,
        r"^/v2/actions/\d+$",
        r"/snapshots$",
        ".*",
    ]
    rules: list[dict[str, Any]] = []
    for _ in range(rng.randint(8, 16)):
        kind = rng.choice(["error_500", "error_503_html", "rate_limit_429", "latency", "lose_response"])
        method = rng.choice(["GET", "POST", "DELETE", "*"])
        if kind == "lose_response":
            method = rng.choice(["POST", "DELETE"])
        rule: dict[str, Any] = {
            "kind": kind,
            "method": method,
            "path": rng.choice(paths),
            "after": rng.randint(0, 40),
            "times": rng.randint(1, 3),
        }
        if kind == "latency":
            rule["seconds"] = round(rng.uniform(0.05, 0.6), 2)
        elif kind == "rate_limit_429":
            rule["seconds"] = 1
        rules.append(rule)
    return rules


@dataclass
class StormSaga:
    kind: str
    steps: list[str] | None
    inputs: dict[str, Any]
    droplet: str | None  # the seeded droplet's name, if it acts on one
    saga_id: uuid.UUID | None = None
    error: str | None = None


def fault_storm(sim: Sim, ledger: Ledger, settings: Settings, count: int, seed: int) -> list[CaseResult]:
    """``count`` sagas at once in threads (the core Runner), under a seeded storm of faults.

    Each saga ends terminal, raises nothing unhandled, and the world holds exactly what the
    completed sagas made: nothing leaked, nothing doubled, and no real rate-limit 429.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    sim.reset()
    lag = rng.choice([3.0, 10.0, 25.0])
    sim.control.post(
        "/_sim/config",
        json={"snapshot_listing_lag_seconds": lag, "snapshot_delete_linger_seconds": rng.choice([3.0, 25.0])},
    ).raise_for_status()
    sim.control.post("/_sim/domains", json={"name": DOMAIN}).raise_for_status()
    plans: list[StormSaga] = []
    for i in range(count):
        kind, steps = rng.choice(STORM_SHAPES)
        if kind == "provision" or (steps and steps[0] == "create_droplet"):
            inputs: dict[str, Any] = {
                "name": f"new-{i}",
                "region": "nyc3",
                "size": "s-1vcpu-1gb",
                "image": "ubuntu-24-04-x64",
                "domain": DOMAIN,
                "hostname": f"www-{i}",
            }
            plans.append(StormSaga(kind, steps, inputs, None))
            continue
        name = f"web-{i}"
        droplet_id = int(sim.control.post("/_sim/droplets", json={"name": name}).json()["droplet"]["id"])
        inputs = {"droplet_id": droplet_id}
        if kind == "update":
            inputs["size"] = rng.choice(["s-2vcpu-2gb", "s-2vcpu-4gb"])
        plans.append(StormSaga(kind, steps, inputs, name))
    before = sim.world()
    sim.add_faults(*storm_faults(rng))
    settings = settings.model_copy(update={"do_rate_window_scale": 0.02})

    def one(plan: StormSaga) -> None:
        services = Services(settings)
        try:
            saga, _ = ledger.create_saga(catalog().new_saga(plan.kind, plan.inputs, steps=plan.steps))
            plan.saga_id = saga.id
            Runner(ledger, catalog(), services).advance(saga.id)
        except BaseException as exc:  # an unhandled exception is a finding
            plan.error = f"{type(exc).__name__}: {exc}"
        finally:
            services.close()

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    sim.clear_faults()

    expected = {
        "droplets": dict(before["droplets"]),
        "snapshots": list(before["snapshots"]),
        "records": list(before["records"]),
    }
    results: list[CaseResult] = []
    for i, plan in enumerate(plans):
        problems = []
        if plan.error:
            problems.append(f"raised {plan.error}")
        saga = ledger.get_saga(plan.saga_id) if plan.saga_id else None
        if saga is None:
            problems.append("no saga")
        elif saga.status not in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK):
            problems.append(f"ended {saga.status.value}: {saga.error}")
        elif saga.status is SagaStatus.COMPLETED:
            _apply_storm_saga(expected, plan, saga)
        name = f"storm {i} {plan.kind}{'[' + ','.join(plan.steps) + ']' if plan.steps else ''}"
        results.append(
            CaseResult(name, Verdict(not problems, detail="; ".join(problems)), time.monotonic() - started)
        )
    # The world as a whole: exactly what the completed sagas made.
    deadline = time.monotonic() + 5
    while True:
        extra, missing, notes = _diff(expected, sim.world())
        if not (extra or missing) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    state = sim.state()
    doubled = doubled_creates(state["counters"]["writes"])
    real_429 = int(state["counters"].get("rate_limited_429", 0))
    problems = notes + [f"doubled {d}" for d in doubled]
    if real_429:
        problems.append(f"{real_429} real rate-limit 429s (the shared budget let them through)")
    results.append(
        CaseResult(
            f"storm world (seed {seed})",
            Verdict(not problems, leaked=extra, doubled=len(doubled), detail="; ".join(problems)),
            time.monotonic() - started,
        )
    )
    return results


def _apply_storm_saga(expected: dict[str, Any], plan: StormSaga, saga: SagaRun) -> None:
    droplets = expected["droplets"]
    if "create_droplet_snapshot" in saga.step_names:
        expected["snapshots"].append(f"arcadia-snap-{plan.inputs['droplet_id']}-{saga.id.hex[:8]}")
    if plan.droplet is not None:
        _status, size = droplets[plan.droplet]
        if plan.kind == "suspend":
            droplets[plan.droplet] = ("off", size)
        elif plan.kind == "update":
            droplets[plan.droplet] = ("active", plan.inputs["size"])
    if plan.kind == "provision":
        droplets[plan.inputs["name"]] = ("active", plan.inputs["size"])
        address = saga.context["create_droplet"]["public_ipv4"]
        expected["records"].append((plan.inputs["hostname"], address))
    expected["snapshots"].sort()
    expected["records"].sort()
