"""Every saga kind in the registry, table-driven: the happy path, and a failure after every step.

A failure is a probe step appended after step i of the kind (the test kind runs any registered
steps): ``fail`` before the kind's pivot, which must roll everything back, and ``flaky`` (fails
twice, then succeeds) after it, which must be retried forward to ``completed``. Each case checks
the simulator holds exactly what it should: nothing leaked, nothing doubled. A new kind or step
in the registry is covered without touching this file, once ``prepare`` knows its inputs.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.models import Reversibility, SagaStatus
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import run_saga, seed_droplet

DOMAIN = "example.com"
FIXED_KINDS = [k for k in catalog().kind_names if catalog().kind(k).steps is not None]


def world(sim: httpx.Client, api: httpx.Client) -> dict[str, Any]:
    """What the account holds, in the terms a leak or a double would show up in."""
    state = sim.get("/_sim/state").json()
    droplets = {d["name"]: (d["status"], d["size_slug"]) for d in state["droplets"] if not d.get("deleted")}
    snapshots = sorted(s["name"] for s in state["snapshots"] if not s.get("deleted"))
    records = sorted(
        (r["name"], r["data"])
        for r in api.get(f"/v2/domains/{DOMAIN}/records", params={"per_page": 200}).json()["domain_records"]
        if r["type"] == "A"
    )
    return {"droplets": droplets, "snapshots": snapshots, "records": records}


def prepare(kind: str, sim: httpx.Client, api: httpx.Client) -> dict[str, Any]:
    """A world the kind can act on, and its inputs."""
    sim.post("/_sim/domains", json={"name": DOMAIN}).raise_for_status()
    if kind == "provision":
        return {
            "name": "web-new",
            "region": "nyc3",
            "size": "s-1vcpu-1gb",
            "image": "ubuntu-24-04-x64",
            "domain": DOMAIN,
            "hostname": "www",
        }
    droplet_id = seed_droplet(sim, "web-1")
    droplet = api.get(f"/v2/droplets/{droplet_id}").json()["droplet"]
    address = next(n["ip_address"] for n in droplet["networks"]["v4"] if n["type"] == "public")
    api.post(
        f"/v2/domains/{DOMAIN}/records", json={"type": "A", "name": "app", "data": address}
    ).raise_for_status()
    inputs: dict[str, Any] = {"droplet_id": droplet_id}
    if kind == "resume":
        _act_and_wait(api, droplet_id, {"type": "power_off"}, until=lambda d: d["status"] == "off")
    elif kind == "update":
        inputs["size"] = "s-2vcpu-2gb"
    elif kind == "rollback":
        action = _act_and_wait(api, droplet_id, {"type": "snapshot", "name": "golden"})
        assert action["status"] == "completed"
        inputs["snapshot_id"] = _wait_for_snapshot(api, droplet_id, "golden")
    elif kind == "offboard":
        inputs.update(domain=DOMAIN, hostname="app")
    return inputs


def _act_and_wait(
    api: httpx.Client, droplet_id: int, body: dict[str, Any], until: Any = None
) -> dict[str, Any]:
    action = api.post(f"/v2/droplets/{droplet_id}/actions", json=body).json()["action"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        action = api.get(f"/v2/actions/{action['id']}").json()["action"]
        droplet = api.get(f"/v2/droplets/{droplet_id}").json()["droplet"]
        if action["status"] != "in-progress" and (until is None or until(droplet)):
            return dict(action)
        time.sleep(0.05)
    raise AssertionError(f"{body} did not finish")


def _wait_for_snapshot(api: httpx.Client, droplet_id: int, name: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for snap in api.get(f"/v2/droplets/{droplet_id}/snapshots").json()["snapshots"]:
            if snap["name"] == name:
                return int(snap["id"])
        time.sleep(0.02)
    raise AssertionError(f"snapshot {name} never listed")


def expected_after(
    steps: list[str], before: dict[str, Any], saga: Any, inputs: dict[str, Any]
) -> dict[str, Any]:
    """What completed steps leave behind, step by step, from the world before them."""
    droplets = dict(before["droplets"])
    snapshots = list(before["snapshots"])
    records = list(before["records"])
    name = "web-new" if "name" in inputs else "web-1"
    for step in steps:
        status, size = droplets.get(name, ("active", inputs.get("size")))
        if step == "create_droplet":
            droplets[name] = ("active", inputs["size"])
        elif step == "create_dns_record":
            records.append(("www", saga.context["create_droplet"]["public_ipv4"]))
        elif step == "create_droplet_snapshot":
            snapshots.append(f"arcadia-snap-{inputs['droplet_id']}-{saga.id.hex[:8]}")
        elif step == "power_off_droplet":
            droplets[name] = ("off", size)
        elif step == "power_on_droplet":
            droplets[name] = ("active", size)
        elif step == "resize_droplet":
            droplets[name] = (status, inputs["size"])
        elif step == "delete_dns_record":
            records = [r for r in records if r[0] != inputs["hostname"]]
        elif step == "delete_droplet":
            del droplets[name]
    return {"droplets": droplets, "snapshots": sorted(snapshots), "records": sorted(records)}


@pytest.mark.parametrize("kind", FIXED_KINDS)
def test_every_kind_completes_and_leaves_the_world_its_steps_describe(
    kind: str, sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    inputs = prepare(kind, sim, api)
    before = world(sim, api)
    saga = run_saga(ledger, settings, kind, inputs)
    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert world(sim, api) == expected_after(list(saga.step_names), before, saga, inputs)


def failure_cases() -> list[tuple[str, int]]:
    return [(kind, i) for kind in FIXED_KINDS for i in range(len(catalog().kind(kind).steps or ()))]


@pytest.mark.parametrize(("kind", "position"), failure_cases())
def test_failure_after_every_step(
    kind: str, position: int, sim: httpx.Client, api: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    steps = list(catalog().kind(kind).steps or ())[: position + 1]
    inputs = prepare(kind, sim, api)
    past_pivot = any(catalog().step(s).reversibility_for(inputs) is Reversibility.PIVOT for s in steps)
    before = world(sim, api)
    saga = run_saga(ledger, settings, "test", inputs, [*steps, "flaky" if past_pivot else "fail"])
    after = world(sim, api)
    if past_pivot:
        assert saga.status is SagaStatus.COMPLETED, saga.error  # retried forward past the pivot
        assert after == expected_after(steps, before, saga, inputs)
    else:
        assert saga.status is SagaStatus.ROLLED_BACK, saga.error
        assert after == before  # every step undone: nothing leaked, nothing doubled
