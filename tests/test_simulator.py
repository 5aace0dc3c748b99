"""Behaviour of the DigitalOcean simulator over real HTTP (loopback, httpx, no mocks).

Timing, eventual consistency, the pending-event rule, rate limits, every fault kind, pagination and the
``/_sim`` control endpoints. Times run at ``time_scale=0.01`` (a simulated second is 10 ms).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sagas.digitalocean.simulator import RunningSimulator, SimulatorConfig, run_simulator_in_thread

SCALE = 0.01
AUTH = {"Authorization": "Bearer dop_v1_behaviour-test"}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningSimulator]:
    with run_simulator_in_thread(SimulatorConfig(time_scale=SCALE)) as running:
        yield running


@pytest.fixture
def control(server: RunningSimulator) -> Iterator[httpx.Client]:
    """The ``/_sim`` client; the simulator is reset to a known config before each test."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert client.post("/_sim/reset").status_code == 204
        assert client.post("/_sim/config", json=SimulatorConfig(time_scale=SCALE).model_dump()).is_success
        yield client


@pytest.fixture
def do(server: RunningSimulator, control: httpx.Client) -> Iterator[httpx.Client]:
    """An authenticated API client."""
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client:
        yield client


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def seed(control: httpx.Client, name: str = "web-1", **extra: Any) -> int:
    response = control.post("/_sim/droplets", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    assert response.json()["droplet"]["status"] == "active"
    return int(response.json()["droplet"]["id"])


def act(do: httpx.Client, droplet_id: int, **body: Any) -> dict[str, Any]:
    response = do.post(f"/v2/droplets/{droplet_id}/actions", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json()["action"])


def action_status(do: httpx.Client, action_id: int) -> str:
    return str(do.get(f"/v2/actions/{action_id}").json()["action"]["status"])


def wait_completed(do: httpx.Client, action_id: int) -> None:
    eventually(lambda: action_status(do, action_id) == "completed")


def snapshot_names(do: httpx.Client, droplet_id: int) -> list[str]:
    return [s["name"] for s in do.get(f"/v2/droplets/{droplet_id}/snapshots").json()["snapshots"]]


# --- timing ---------------------------------------------------------------------------------------


def test_create_action_completes_after_scaled_action_seconds(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"action_seconds": 20.0})
    start = time.monotonic()
    created = do.post("/v2/droplets", json={"name": "t-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"})
    assert created.status_code == 202
    droplet, action_id = created.json()["droplet"], created.json()["links"]["actions"][0]["id"]
    assert droplet["status"] == "new" and droplet["networks"] == {"v4": [], "v6": []}
    assert action_status(do, action_id) == "in-progress"
    wait_completed(do, action_id)
    assert time.monotonic() - start >= 20.0 * SCALE
    assert do.get(f"/v2/droplets/{droplet['id']}").json()["droplet"]["status"] == "active"


def test_an_action_type_takes_its_own_configured_seconds(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"action_seconds_by_type": {"snapshot": 60.0}})
    droplet_id = seed(control)
    start = time.monotonic()
    action = act(do, droplet_id, type="snapshot", name="slow")
    time.sleep(0.1)
    assert action_status(do, action["id"]) == "in-progress"
    wait_completed(do, action["id"])
    assert time.monotonic() - start >= 60.0 * SCALE


def test_action_completes_before_the_status_changes(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"status_lag_seconds": 50.0})
    droplet_id = seed(control)
    action = act(do, droplet_id, type="power_off")
    wait_completed(do, action["id"])
    completed_at = time.monotonic()
    assert do.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["status"] == "active"
    eventually(lambda: do.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["status"] == "off")
    assert time.monotonic() - completed_at >= 0.3  # most of the 0.5 s lag
    resized = act(do, droplet_id, type="resize", size="s-2vcpu-4gb", disk=True)
    wait_completed(do, resized["id"])
    droplet = do.get(f"/v2/droplets/{droplet_id}").json()["droplet"]
    assert droplet["size_slug"] == "s-2vcpu-4gb" and droplet["disk"] == 80 and droplet["memory"] == 4096


# --- snapshots: listing lag, delete linger --------------------------------------------------------


def test_a_snapshot_is_listed_late_and_lingers_in_listings_after_its_delete(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post(
        "/_sim/config", json={"snapshot_listing_lag_seconds": 50.0, "snapshot_delete_linger_seconds": 50.0}
    )
    droplet_id = seed(control)
    action = act(do, droplet_id, type="snapshot", name="nightly")
    assert action["resource_id"] == droplet_id
    wait_completed(do, action["id"])
    assert snapshot_names(do, droplet_id) == []  # completed, but not listed yet
    assert do.get("/v2/snapshots").json()["snapshots"] == []
    eventually(lambda: snapshot_names(do, droplet_id) == ["nightly"])
    snap_id = do.get(f"/v2/droplets/{droplet_id}/snapshots").json()["snapshots"][0]["id"]
    assert isinstance(snap_id, int)
    assert do.get(f"/v2/snapshots/{snap_id}").json()["snapshot"]["id"] == str(snap_id)
    assert do.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["snapshot_ids"] == [snap_id]

    assert do.delete(f"/v2/snapshots/{snap_id}").status_code == 204
    assert do.get(f"/v2/snapshots/{snap_id}").status_code == 404
    assert snapshot_names(do, droplet_id) == ["nightly"]  # lingers in the listings
    assert [s["id"] for s in do.get("/v2/snapshots").json()["snapshots"]] == [str(snap_id)]
    assert do.delete(f"/v2/snapshots/{snap_id}").status_code == 404
    eventually(lambda: snapshot_names(do, droplet_id) == [])
    assert do.get("/v2/snapshots").json()["meta"]["total"] == 0
    state = control.get("/_sim/state").json()
    assert state["snapshots"][0]["deleted"] is True and state["counters"]["writes"]["snapshot:nightly"] == 1


def test_deleted_droplet_lingers_then_404(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"droplet_delete_linger_seconds": 50.0})
    droplet_id = seed(control)
    assert do.delete(f"/v2/droplets/{droplet_id}").status_code == 204
    assert do.get(f"/v2/droplets/{droplet_id}").status_code == 200
    assert do.get("/v2/droplets").json()["meta"]["total"] == 1
    assert do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "reboot"}).status_code == 404
    eventually(lambda: do.get(f"/v2/droplets/{droplet_id}").status_code == 404)
    assert do.get("/v2/droplets").json()["meta"]["total"] == 0
    assert control.get("/_sim/state").json()["droplets"][0]["deleted"] is True


# --- pending event --------------------------------------------------------------------------------


def test_an_action_while_another_runs_is_a_pending_event_422_and_not_applied(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/config", json={"action_seconds": 50.0})
    droplet_id = seed(control)
    first = act(do, droplet_id, type="power_off")
    second = do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "snapshot", "name": "x"})
    assert second.status_code == 422
    assert second.json()["id"] == "unprocessable_entity"
    assert second.json()["message"] == "Droplet already has a pending event."
    assert second.json()["request_id"] == second.headers["x-request-id"]
    assert do.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["locked"] is True
    wait_completed(do, first["id"])
    act(do, droplet_id, type="snapshot", name="x")
    assert control.get("/_sim/state").json()["counters"]["writes"].get("snapshot:x") == 1


def test_resize_needs_the_droplet_off(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control)
    message = refusal(do, droplet_id, type="resize", size="s-2vcpu-4gb")
    assert message == "Droplet is currently on. Please power it off to run this event."


def droplet(do: httpx.Client, droplet_id: int) -> dict[str, Any]:
    response = do.get(f"/v2/droplets/{droplet_id}")
    assert response.status_code == 200, response.text
    return dict(response.json()["droplet"])


def test_create_with_tags_is_locked_only_while_a_later_action_runs(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/config", json={"action_seconds": 10.0})
    body = {"name": "tagged-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64", "tags": ["app:x", "web"]}
    created = do.post("/v2/droplets", json=body).json()
    droplet_id, create_id = created["droplet"]["id"], created["links"]["actions"][0]["id"]
    seed(control, "untagged")
    by_tag = do.get("/v2/droplets", params={"tag_name": "app:x"}).json()
    assert [d["id"] for d in by_tag["droplets"]] == [droplet_id] and by_tag["meta"]["total"] == 1
    assert by_tag["droplets"][0]["tags"] == ["app:x", "web"]
    new = droplet(do, droplet_id)
    assert new["status"] == "new" and new["locked"] is False  # as the spec's own create example shows
    wait_completed(do, create_id)
    active = droplet(do, droplet_id)
    assert active["status"] == "active" and active["locked"] is False
    reboot = act(do, droplet_id, type="reboot")
    assert droplet(do, droplet_id)["locked"] is True
    wait_completed(do, reboot["id"])
    assert droplet(do, droplet_id)["locked"] is False
    assert "app:x" in control.get("/_sim/state").json()["tags"]


def test_shutdown_then_power_on_with_the_status_lag(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"status_lag_seconds": 30.0})
    droplet_id = seed(control)
    shutdown = act(do, droplet_id, type="shutdown")
    assert shutdown["type"] == "shutdown" and shutdown["status"] == "in-progress"
    wait_completed(do, shutdown["id"])
    assert droplet(do, droplet_id)["status"] == "active"  # completed, status not changed yet
    eventually(lambda: droplet(do, droplet_id)["status"] == "off")
    power_on = act(do, droplet_id, type="power_on")
    wait_completed(do, power_on["id"])
    assert droplet(do, droplet_id)["status"] == "off"
    eventually(lambda: droplet(do, droplet_id)["status"] == "active")
    writes = control.get("/_sim/state").json()["counters"]["writes"]
    assert writes[f"action:shutdown:{droplet_id}"] == 1 and writes[f"action:power_on:{droplet_id}"] == 1


def refusal(do: httpx.Client, droplet_id: int, **body: Any) -> str:
    """POST an action that must be refused with DigitalOcean's 422 body; return its message."""
    response = do.post(f"/v2/droplets/{droplet_id}/actions", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == {"id", "message", "request_id"} and error["id"] == "unprocessable_entity"
    assert error["request_id"] == response.headers["x-request-id"]
    return str(error["message"])


def powered_off(do: httpx.Client, control: httpx.Client, **extra: Any) -> int:
    droplet_id = seed(control, **extra)
    wait_completed(do, act(do, droplet_id, type="power_off")["id"])
    eventually(lambda: droplet(do, droplet_id)["status"] == "off")
    return droplet_id


def test_power_off_of_an_off_droplet_is_refused_as_already_powered_off(
    do: httpx.Client, control: httpx.Client
) -> None:
    droplet_id = powered_off(do, control)
    assert refusal(do, droplet_id, type="power_off") == "Droplet is already powered off."
    # A refusal is no action: it is not listed, not counted, and blocks nothing after it.
    assert [a["type"] for a in do.get(f"/v2/droplets/{droplet_id}/actions").json()["actions"]] == [
        "power_off"
    ]
    assert control.get("/_sim/state").json()["counters"]["writes"][f"action:power_off:{droplet_id}"] == 1
    assert droplet(do, droplet_id)["locked"] is False
    wait_completed(do, act(do, droplet_id, type="power_on")["id"])


def test_shutdown_of_an_off_droplet_still_completes(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = powered_off(do, control)
    wait_completed(do, act(do, droplet_id, type="shutdown")["id"])
    time.sleep(2 * SCALE)  # past the status lag: nothing turned it back on
    assert droplet(do, droplet_id)["status"] == "off"


def test_a_second_power_off_inside_the_status_lag_is_accepted(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/config", json={"status_lag_seconds": 50.0})
    droplet_id = seed(control)
    wait_completed(do, act(do, droplet_id, type="power_off")["id"])
    assert droplet(do, droplet_id)["status"] == "active"  # the status decides, and it has not changed yet
    wait_completed(do, act(do, droplet_id, type="power_off")["id"])
    eventually(lambda: droplet(do, droplet_id)["status"] == "off")


def test_power_on_reboot_and_power_cycle_are_accepted_in_either_power_state(
    do: httpx.Client, control: httpx.Client
) -> None:
    # The sources disagree (power_on of a running droplet) or are silent: the simulator accepts.
    running = seed(control, "on-1")
    for kind in ("power_on", "reboot", "power_cycle"):
        wait_completed(do, act(do, running, type=kind)["id"])
    off = powered_off(do, control, name="off-1")
    for kind in ("reboot", "power_cycle"):
        wait_completed(do, act(do, off, type=kind)["id"])
        eventually(lambda: droplet(do, off)["status"] == "active")
        wait_completed(do, act(do, off, type="power_off")["id"])
        eventually(lambda: droplet(do, off)["status"] == "off")


def test_snapshot_and_enable_ipv6_of_a_running_droplet_are_accepted(
    do: httpx.Client, control: httpx.Client
) -> None:
    droplet_id = seed(control)
    wait_completed(do, act(do, droplet_id, type="snapshot", name="live")["id"])
    wait_completed(do, act(do, droplet_id, type="enable_ipv6")["id"])
    assert droplet(do, droplet_id)["status"] == "active"


def test_resize_to_the_droplets_own_size_is_refused(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = powered_off(do, control, size="s-1vcpu-1gb")
    message = refusal(do, droplet_id, type="resize", size="s-1vcpu-1gb")
    assert message == "The droplet is already set to this size."
    assert f"action:resize:{droplet_id}" not in control.get("/_sim/state").json()["counters"]["writes"]
    # The power state is checked first: a running droplet hears that it must be off.
    running = seed(control, "on-1", size="s-1vcpu-1gb")
    assert "power it off" in refusal(do, running, type="resize", size="s-1vcpu-1gb")


def test_disable_backups_without_backups_is_refused(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control)
    assert (
        refusal(do, droplet_id, type="disable_backups")
        == "Backups have already been disabled on this Droplet."
    )
    with_backups = seed(control, "backed-up", backups=True)
    wait_completed(do, act(do, with_backups, type="disable_backups")["id"])
    assert refusal(do, with_backups, type="disable_backups").startswith("Backups have already been disabled")


def test_resize_without_disk_keeps_the_disk(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control, size="s-1vcpu-1gb")
    wait_completed(do, act(do, droplet_id, type="power_off")["id"])
    eventually(lambda: droplet(do, droplet_id)["status"] == "off")
    resize = act(do, droplet_id, type="resize", size="s-2vcpu-2gb")
    assert droplet(do, droplet_id)["locked"] is True
    wait_completed(do, resize["id"])
    after = droplet(do, droplet_id)
    assert (after["size_slug"], after["memory"], after["vcpus"], after["disk"]) == (
        "s-2vcpu-2gb",
        2048,
        2,
        25,
    )
    assert after["size"]["slug"] == "s-2vcpu-2gb" and after["status"] == "off"
    state = control.get("/_sim/state").json()["droplets"][0]
    assert state["disk_resized"] is False
    # Back down to the original size works because the disk did not grow.
    wait_completed(do, act(do, droplet_id, type="resize", size="s-1vcpu-1gb")["id"])
    assert droplet(do, droplet_id)["size_slug"] == "s-1vcpu-1gb"


def test_resize_with_disk_grows_it_for_good(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control, size="s-1vcpu-1gb")
    wait_completed(do, act(do, droplet_id, type="power_off")["id"])
    eventually(lambda: droplet(do, droplet_id)["status"] == "off")
    wait_completed(do, act(do, droplet_id, type="resize", size="s-2vcpu-4gb", disk=True)["id"])
    after = droplet(do, droplet_id)
    assert (after["memory"], after["vcpus"], after["disk"]) == (4096, 2, 80)
    assert after["disk_info"][0]["size"]["amount"] == 80
    state = control.get("/_sim/state").json()
    assert state["droplets"][0]["disk_resized"] is True
    assert state["counters"]["writes"][f"action:resize:{droplet_id}"] == 1
    smaller = refusal(do, droplet_id, type="resize", size="s-1vcpu-1gb")
    assert smaller == "Size can not decrease size of Droplet's disk image"
    for bad in ({"size": "huge"}, {"size": "s-4vcpu-8gb", "disk": "yes"}):
        refused = do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "resize", **bad})
        assert refused.status_code == 422 and refused.json()["id"] == "unprocessable_entity"


def _snapshot_of(do: httpx.Client, droplet_id: int, name: str) -> int:
    wait_completed(do, act(do, droplet_id, type="snapshot", name=name)["id"])
    listed = eventually(lambda: do.get(f"/v2/droplets/{droplet_id}/snapshots").json()["snapshots"])
    return int(listed[0]["id"])


def test_restore_takes_only_a_snapshot_of_that_droplet(do: httpx.Client, control: httpx.Client) -> None:
    first, second = seed(control, "r-1"), seed(control, "r-2")
    snap_id = _snapshot_of(do, first, "r-1-snap")
    for image in (_snapshot_of(do, second, "r-2-snap"), 999999, "ubuntu-22-04-x64", 129211873):
        refused = do.post(f"/v2/droplets/{first}/actions", json={"type": "restore", "image": image})
        assert refused.status_code == 422, image
        assert refused.json()["id"] == "unprocessable_entity"
    restore = act(do, first, type="restore", image=snap_id)
    assert droplet(do, first)["locked"] is True
    wait_completed(do, restore["id"])
    image = droplet(do, first)["image"]
    assert image["id"] == snap_id and image["type"] == "snapshot" and image["name"] == "r-1-snap"


def test_a_rebuild_takes_an_image_slug_or_id_and_refuses_an_unknown_one(
    do: httpx.Client, control: httpx.Client
) -> None:
    droplet_id = seed(control, image="ubuntu-22-04-x64")
    wait_completed(do, act(do, droplet_id, type="rebuild", image="debian-12-x64")["id"])
    assert droplet(do, droplet_id)["image"]["slug"] == "debian-12-x64"
    wait_completed(do, act(do, droplet_id, type="rebuild", image=160216920)["id"])
    assert droplet(do, droplet_id)["image"]["slug"] == "ubuntu-24-04-x64"
    refused = do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "rebuild", "image": "nope-1"})
    assert refused.status_code == 422


def test_actions_on_a_droplet_being_created_are_pending(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"action_seconds": 50.0})
    created = do.post("/v2/droplets", json={"name": "p-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"})
    droplet_id = created.json()["droplet"]["id"]
    refused = do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "shutdown"})
    assert refused.status_code == 422 and refused.json()["message"] == "Droplet already has a pending event."


# --- domains and DNS records ----------------------------------------------------------------------


def seed_domain(control: httpx.Client, name: str = "example.com", **extra: Any) -> None:
    response = control.post("/_sim/domains", json={"name": name, **extra})
    assert response.status_code == 201, response.text
    assert response.json()["domain"]["name"] == name.lower()


def record(do: httpx.Client, domain: str = "example.com", **body: Any) -> dict[str, Any]:
    response = do.post(f"/v2/domains/{domain}/records", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json()["domain_record"])


def records(do: httpx.Client, domain: str = "example.com", **params: Any) -> list[dict[str, Any]]:
    response = do.get(f"/v2/domains/{domain}/records", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["domain_records"])


def test_a_seeded_domain_has_its_soa_and_ns_records(do: httpx.Client, control: httpx.Client) -> None:
    seed_domain(control, "Example.COM", ip_address="203.0.113.7")
    listed = records(do)
    assert [(r["type"], r["name"], r["data"]) for r in listed] == [
        ("SOA", "@", "1800"),
        ("NS", "@", "ns1.digitalocean.com"),
        ("NS", "@", "ns2.digitalocean.com"),
        ("NS", "@", "ns3.digitalocean.com"),
        ("A", "@", "203.0.113.7"),
    ]
    assert records(do, name="example.com", type="A")[0]["data"] == "203.0.113.7"
    again = control.post("/_sim/domains", json={"name": "example.com"})
    assert again.status_code == 422 and "already exists" in again.json()["message"]
    assert control.post("/_sim/domains", json={"name": "not a domain"}).status_code == 400
    assert control.post("/_sim/domains", json={}).status_code == 400
    assert control.get("/_sim/state").json()["counters"]["writes"] == {}  # seeding is not a write


def test_a_record_is_created_with_defaults_read_back_deleted_once_and_counted(
    do: httpx.Client, control: httpx.Client
) -> None:
    seed_domain(control)
    created = record(do, type="A", name="www", data="192.0.2.10")
    assert created == {
        "id": created["id"],
        "type": "A",
        "name": "www",
        "data": "192.0.2.10",
        "priority": None,
        "port": None,
        "ttl": 1800,
        "weight": None,
        "flags": None,
        "tag": None,
    }
    got = do.get(f"/v2/domains/example.com/records/{created['id']}")
    assert got.status_code == 200 and got.json()["domain_record"] == created
    assert do.delete(f"/v2/domains/example.com/records/{created['id']}").status_code == 204
    assert do.get(f"/v2/domains/example.com/records/{created['id']}").status_code == 404
    gone = do.delete(f"/v2/domains/example.com/records/{created['id']}")
    assert gone.status_code == 404 and gone.json()["id"] == "not_found"
    writes = control.get("/_sim/state").json()["counters"]["writes"]
    assert writes == {"dns:A:www.example.com": 1, f"delete_dns_record:{created['id']}": 1}


def test_every_supported_record_type(do: httpx.Client, control: httpx.Client) -> None:
    seed_domain(control)
    made = [
        record(do, type="A", name="app", data="192.0.2.1", ttl=60),
        record(do, type="AAAA", name="app", data="2001:db8::1"),
        record(do, type="CNAME", name="www", data="app.example.com."),
        record(do, type="CNAME", name="alias", data="@"),
        record(do, type="TXT", name="_acme-challenge.app", data="token with spaces=1"),
        record(do, type="MX", name="@", data="mail.example.com.", priority=10),
        record(do, type="NS", name="sub", data="ns1.elsewhere.net."),
        record(do, type="A", name="*", data="192.0.2.2"),
    ]
    assert made[0]["ttl"] == 60 and made[5]["priority"] == 10 and made[1]["priority"] is None
    writes = control.get("/_sim/state").json()["counters"]["writes"]
    assert writes["dns:CNAME:www.example.com"] == 1 and writes["dns:MX:example.com"] == 1
    assert writes["dns:TXT:_acme-challenge.app.example.com"] == 1
    # The same record twice is two records, as a blindly retried POST would leave it.
    record(do, type="TXT", name="dup", data="x")
    record(do, type="TXT", name="dup", data="x")
    assert len(records(do, name="dup.example.com")) == 2
    assert control.get("/_sim/state").json()["counters"]["writes"]["dns:TXT:dup.example.com"] == 2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "www", "data": "192.0.2.1"}, "Type can't be blank"),
        ({"type": "BOGUS", "name": "www", "data": "192.0.2.1"}, "not a valid record type"),
        ({"type": "SRV", "name": "_sip._tcp", "data": "sip.example.com."}, "cannot be created"),
        ({"type": "A", "data": "192.0.2.1"}, "Name can't be blank"),
        ({"type": "A", "name": "bad name", "data": "192.0.2.1"}, "is invalid"),
        ({"type": "A", "name": "www"}, "Data can't be blank"),
        ({"type": "A", "name": "www", "data": "300.1.1.1"}, "IPv4"),
        ({"type": "A", "name": "www", "data": "2001:db8::1"}, "IPv4"),
        ({"type": "AAAA", "name": "www", "data": "192.0.2.1"}, "IPv6"),
        ({"type": "CNAME", "name": "www", "data": "app.example.com"}, "end with a dot"),
        ({"type": "CNAME", "name": "www", "data": "not a host."}, "hostname"),
        ({"type": "MX", "name": "@", "data": "mail.example.com."}, "Priority"),
        ({"type": "A", "name": "www", "data": "192.0.2.1", "ttl": 5}, "TTL"),
        ({"type": "A", "name": "www", "data": "192.0.2.1", "ttl": "1800"}, "Ttl must be an integer"),
        ({"type": "A", "name": "www", "data": "192.0.2.1", "ttl": True}, "Ttl must be an integer"),
        ({"type": "CNAME", "name": "@", "data": "other.net."}, "CNAME records cannot share"),
    ],
)
def test_invalid_records_are_422_with_a_clear_message(
    do: httpx.Client, control: httpx.Client, body: dict[str, Any], fragment: str
) -> None:
    seed_domain(control)
    refused = do.post("/v2/domains/example.com/records", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["id"] == "unprocessable_entity" and fragment in refused.json()["message"]
    assert control.get("/_sim/state").json()["counters"]["writes"] == {}


def test_a_cname_shares_its_name_with_nothing(do: httpx.Client, control: httpx.Client) -> None:
    seed_domain(control)
    record(do, type="A", name="www", data="192.0.2.1")
    clash = do.post("/v2/domains/example.com/records", json={"type": "CNAME", "name": "www", "data": "@"})
    assert clash.status_code == 422 and "CNAME" in clash.json()["message"]
    record(do, type="CNAME", name="blog", data="@")
    for body in (
        {"type": "TXT", "name": "blog", "data": "x"},
        {"type": "CNAME", "name": "BLOG", "data": "@"},
    ):
        assert do.post("/v2/domains/example.com/records", json=body).status_code == 422


def test_record_listings_filter_by_full_name_and_type_and_page_in_id_order(
    do: httpx.Client, control: httpx.Client
) -> None:
    seed_domain(control)
    seed_domain(control, "other.org")
    for i in range(25):
        record(do, type="A", name=f"h{i}", data=f"192.0.2.{i + 1}")
    record(do, type="TXT", name="h3", data="v=spf1 -all")
    record(do, "other.org", type="A", name="h3", data="198.51.100.1")

    assert [r["type"] for r in records(do, name="h3.example.com")] == ["A", "TXT"]
    assert [r["data"] for r in records(do, name="H3.Example.com.", type="TXT")] == ["v=spf1 -all"]
    assert records(do, name="h3") == []  # the filter wants the full name
    assert [r["data"] for r in records(do, "other.org", name="h3.other.org")] == ["198.51.100.1"]
    assert len(records(do, type="NS")) == 3
    assert do.get("/v2/domains/example.com/records", params={"type": "BOGUS"}).status_code == 400

    seen: list[int] = []
    url: str | None = "/v2/domains/example.com/records?type=A&per_page=10"
    while url:
        body = do.get(url).json()
        assert body["meta"]["total"] == 25
        seen += [r["id"] for r in body["domain_records"]]
        url = body["links"].get("pages", {}).get("next")
    assert len(seen) == 25 and seen == sorted(seen)
    everything = do.get("/v2/domains/example.com/records").json()
    assert (
        len(everything["domain_records"]) == 20 and everything["meta"]["total"] == 4 + 26
    )  # SOA, NS, A, TXT


def test_unknown_domain_is_404_everywhere(do: httpx.Client, control: httpx.Client) -> None:
    seed_domain(control)
    created = record(do, type="A", name="www", data="192.0.2.1")
    for response in (
        do.get("/v2/domains/nope.com/records"),
        do.post("/v2/domains/nope.com/records", json={"type": "A", "name": "www", "data": "192.0.2.1"}),
        do.get(f"/v2/domains/nope.com/records/{created['id']}"),
        do.delete(f"/v2/domains/nope.com/records/{created['id']}"),
        do.get("/v2/domains/example.com/records/1"),
        do.get("/v2/domains/example.com/records/abc"),
    ):
        assert response.status_code == 404 and response.json()["id"] == "not_found"


def test_domains_are_in_the_state_and_reset(do: httpx.Client, control: httpx.Client) -> None:
    seed_domain(control)
    created = record(do, type="TXT", name="t", data="hello")
    domains = control.get("/_sim/state").json()["domains"]
    assert [d["name"] for d in domains] == ["example.com"]
    assert domains[0]["records"][-1] == created
    counters = control.get("/_sim/state").json()["counters"]["requests"]
    assert counters == {"POST /v2/domains/{domain_name}/records": 1}
    assert control.post("/_sim/reset").status_code == 204
    assert control.get("/_sim/state").json()["domains"] == []
    assert do.get("/v2/domains/example.com/records").status_code == 404
    seed_domain(control)
    assert record(do, type="TXT", name="t", data="hello")["id"] > created["id"]  # ids never reused


def test_record_writes_can_be_faulted(do: httpx.Client, control: httpx.Client) -> None:
    seed_domain(control)
    control.post(
        "/_sim/faults",
        json=[
            {"kind": "lose_response", "method": "POST", "path": "^/v2/domains/[^/]+/records$"},
            {"kind": "error_500", "method": "DELETE", "path": "/records/"},
        ],
    )
    with pytest.raises(httpx.HTTPError):
        do.post("/v2/domains/example.com/records", json={"type": "A", "name": "lost", "data": "192.0.2.9"})
    (lost,) = records(do, name="lost.example.com")  # applied although the answer never came
    assert do.delete(f"/v2/domains/example.com/records/{lost['id']}").status_code == 500
    assert len(records(do, name="lost.example.com")) == 1  # a 500 is not applied
    assert do.delete(f"/v2/domains/example.com/records/{lost['id']}").status_code == 204


# --- rate limits ----------------------------------------------------------------------------------


def test_rate_limit_headers_count_down_and_a_burst_is_a_429_for_that_token_only(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/config", json={"rate_limit_per_minute": 3, "rate_limit_per_hour": 100})
    before = time.time()
    remaining = []
    for _ in range(3):
        response = do.get("/v2/droplets")
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "100"
        remaining.append(int(response.headers["ratelimit-remaining"]))
        assert before <= int(response.headers["ratelimit-reset"]) <= before + 3600 * SCALE + 2
    assert remaining == [99, 98, 97]
    limited = do.get("/v2/droplets")
    assert limited.status_code == 429
    assert (
        limited.json()["id"] == "too_many_requests"
        and limited.json()["message"] == "API Rate limit exceeded."
    )
    assert int(limited.headers["retry-after"]) >= 1 and limited.headers["ratelimit-remaining"] == "0"
    # Another token has its own budget.
    other = do.get("/v2/droplets", headers={"Authorization": "Bearer someone-else"})
    assert other.status_code == 200
    # The minute window is 0.6 s at this scale: the oldest request expires and the token may go on.
    eventually(lambda: do.get("/v2/droplets").status_code == 200, timeout=3)
    counters = control.get("/_sim/state").json()["counters"]
    assert counters["rate_limited_429"] >= 1 and counters["injected_429"] == 0


def test_over_the_hourly_limit_is_a_429_without_retry_after(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/config", json={"rate_limit_per_hour": 2})
    assert [do.get("/v2/actions").status_code for _ in range(3)] == [200, 200, 429]
    limited = do.get("/v2/actions")
    assert limited.headers["ratelimit-remaining"] == "0" and "retry-after" not in limited.headers
    assert int(limited.headers["ratelimit-reset"]) >= int(time.time())


def test_seeding_and_control_requests_do_not_count_against_the_rate_limit(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/config", json={"rate_limit_per_minute": 1})
    for i in range(5):
        seed(control, f"s-{i}")
        control.get("/_sim/state")
    assert do.get("/v2/droplets").json()["meta"]["total"] == 5


def test_a_missing_or_non_bearer_token_is_a_401_with_rate_headers(
    do: httpx.Client, server: RunningSimulator
) -> None:
    response = httpx.get(f"{server.base_url}/v2/droplets")
    assert response.status_code == 401
    assert response.json()["id"] == "unauthorized" and response.json()["request_id"]
    assert "ratelimit-limit" in response.headers
    bad = httpx.get(f"{server.base_url}/v2/droplets", headers={"Authorization": "Basic abc"})
    assert bad.status_code == 401


# --- faults ---------------------------------------------------------------------------------------


def test_error_500_is_json_and_not_applied(do: httpx.Client, control: httpx.Client) -> None:
    control.post("/_sim/faults", json=[{"method": "POST", "path": "^/v2/droplets$", "kind": "error_500"}])
    body = {"name": "f-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"}
    failed = do.post("/v2/droplets", json=body)
    assert failed.status_code == 500 and failed.json()["id"] == "server_error"
    assert do.get("/v2/droplets").json()["meta"]["total"] == 0
    assert do.post("/v2/droplets", json=body).status_code == 202  # times defaults to 1


def test_error_500_applied_applies_the_write_then_answers_a_json_500(
    do: httpx.Client, control: httpx.Client
) -> None:
    droplet_id = seed(control)
    rule = {"method": "POST", "path": r"^/v2/droplets/\d+/actions$", "kind": "error_500_applied"}
    control.post("/_sim/faults", json=rule).raise_for_status()
    failed = do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "snapshot", "name": "edge-1"})
    assert failed.status_code == 500 and failed.json()["id"] == "server_error"
    assert failed.headers["x-request-id"] == failed.json()["request_id"]
    # Applied all the same: the snapshot action exists and was counted once.
    assert [a["type"] for a in do.get(f"/v2/droplets/{droplet_id}/actions").json()["actions"]] == ["snapshot"]
    eventually(lambda: snapshot_names(do, droplet_id) == ["edge-1"])
    assert control.get("/_sim/state").json()["counters"]["writes"]["snapshot:edge-1"] == 1
    # One shot: the next write is answered normally.
    assert do.delete(f"/v2/droplets/{droplet_id}").status_code == 204


def test_error_500_applied_on_a_read_is_a_plain_500(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control)
    control.post("/_sim/faults", json={"method": "GET", "kind": "error_500_applied"}).raise_for_status()
    assert do.get(f"/v2/droplets/{droplet_id}").status_code == 500
    assert do.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["status"] == "active"


def test_an_error_503_html_fault_answers_a_web_page_as_many_times_as_asked(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/faults", json={"kind": "error_503_html", "times": 2})
    for _ in range(2):
        response = do.get("/v2/actions")
        assert response.status_code == 503 and response.headers["content-type"].startswith("text/html")
        assert b"<html>" in response.content
    assert do.get("/v2/actions").status_code == 200


def test_an_injected_429_rounds_retry_after_up_and_is_counted_apart_from_real_limits(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/faults", json={"rules": [{"kind": "rate_limit_429", "seconds": 2.5}]})
    response = do.get("/v2/snapshots")
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json()["id"] == "too_many_requests"
    counters = control.get("/_sim/state").json()["counters"]
    assert (
        counters["injected_429"] == 1 and counters["rate_limited_429"] == 0 and counters["responses_429"] == 1
    )


def test_a_latency_fault_delays_only_matching_requests_and_can_outlast_a_client_timeout(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post(
        "/_sim/faults", json={"kind": "latency", "seconds": 0.3, "method": "GET", "path": "/actions"}
    )
    start = time.monotonic()
    assert do.get("/v2/actions").status_code == 200
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    do.get("/v2/actions")
    assert time.monotonic() - start < 0.3
    control.post("/_sim/faults", json={"kind": "latency", "seconds": 0.4})
    with pytest.raises(httpx.ReadTimeout):
        do.get("/v2/actions", timeout=0.1)
    # Let the abandoned request finish so its response is not counted in the next test.
    eventually(lambda: control.get("/_sim/state").json()["counters"]["statuses"].get("200") == 3)


def test_lose_response_applies_the_write(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control)
    rule = {"method": "POST", "path": r"^/v2/droplets/\d+/actions$", "kind": "lose_response"}
    control.post("/_sim/faults", json=[rule])
    with pytest.raises(httpx.RemoteProtocolError):
        do.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "snapshot", "name": "lost-1"})
    # The server applied it: the snapshot shows up, and a blind retry is refused (or would duplicate).
    eventually(lambda: snapshot_names(do, droplet_id) == ["lost-1"])
    state = control.get("/_sim/state").json()
    assert state["counters"]["writes"]["snapshot:lost-1"] == 1 and state["counters"]["lost_responses"] == 1


def test_a_lost_response_to_a_delete_still_deletes(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control)
    control.post("/_sim/faults", json={"method": "DELETE", "path": "/v2/droplets/", "kind": "lose_response"})
    with pytest.raises(httpx.RemoteProtocolError):
        do.delete(f"/v2/droplets/{droplet_id}")
    assert do.delete(f"/v2/droplets/{droplet_id}").status_code == 404


def test_a_fault_can_start_after_n_matches_and_fire_without_limit_until_cleared(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post(
        "/_sim/faults",
        json={"method": "GET", "path": "^/v2/actions$", "kind": "error_500", "after": 2, "times": None},
    )
    assert [do.get("/v2/actions").status_code for _ in range(5)] == [200, 200, 500, 500, 500]
    assert do.get("/v2/droplets").status_code == 200
    rules = control.get("/_sim/faults").json()["rules"]
    assert rules[0]["matched"] == 5 and rules[0]["fired"] == 3
    assert control.delete("/_sim/faults").status_code == 204
    assert control.get("/_sim/faults").json()["rules"] == []
    assert do.get("/v2/actions").status_code == 200


def test_a_bad_fault_rule_or_config_is_a_400(control: httpx.Client) -> None:
    response = control.post("/_sim/faults", json={"kind": "meteor"})
    assert response.status_code == 400 and response.json()["id"] == "bad_request"
    assert control.post("/_sim/config", json={"time_scale": -1}).status_code == 400
    assert control.post("/_sim/config", json={"no_such_field": 1}).status_code == 400


# --- pagination, state, reset ---------------------------------------------------------------------


def test_following_next_collects_every_item(do: httpx.Client, control: httpx.Client) -> None:
    ids = [seed(control, f"p-{i}", tags=["page"]) for i in range(45)]
    seen: list[int] = []
    url: str | None = "/v2/droplets?tag_name=page&per_page=7"
    pages = 0
    while url:
        body = do.get(url).json()
        assert body["meta"]["total"] == 45
        seen += [d["id"] for d in body["droplets"]]
        url = body["links"].get("pages", {}).get("next")
        pages += 1
    assert seen == ids and pages == 7
    first = do.get("/v2/droplets?per_page=7").json()["links"]["pages"]
    assert set(first) == {"next", "last"} and first["last"].startswith("http://127.0.0.1:")
    assert "page=7" in first["last"]
    assert do.get("/v2/droplets").json()["links"]["pages"]["next"].endswith("page=2&per_page=20")
    assert len(do.get("/v2/droplets?per_page=1000").json()["droplets"]) == 45  # clamped to 200
    assert do.get("/v2/droplets?per_page=abc").status_code == 400


def test_state_counts_requests_by_route(do: httpx.Client, control: httpx.Client) -> None:
    droplet_id = seed(control)
    do.get(f"/v2/droplets/{droplet_id}")
    do.get("/v2/droplets/999")
    do.post("/v2/droplets", json={"name": "c-1", "size": "s-1vcpu-1gb", "image": "debian-12-x64"})
    counters = control.get("/_sim/state").json()["counters"]
    assert counters["requests"] == {"GET /v2/droplets/{droplet_id}": 2, "POST /v2/droplets": 1}
    assert counters["writes"] == {"droplet:c-1": 1}
    assert counters["statuses"] == {"200": 1, "404": 1, "202": 1}


def test_the_request_journal_lists_every_v2_request_in_order_with_its_answer_and_fault(
    do: httpx.Client, control: httpx.Client
) -> None:
    droplet_id = seed(control)  # control requests are not journaled
    start = control.get("/_sim/requests").json()["last_seq"]
    control.post("/_sim/faults", json={"method": "DELETE", "kind": "lose_response"}).raise_for_status()
    do.get(f"/v2/droplets/{droplet_id}", params={"x": "1"})
    do.get("/v2/droplets/999")
    with pytest.raises(httpx.RemoteProtocolError):
        do.delete(f"/v2/droplets/{droplet_id}")
    httpx.get(f"{str(do.base_url).rstrip('/')}/v2/actions")  # no token: 401, journaled too
    body = control.get("/_sim/requests", params={"since": start}).json()
    seen = [(r["method"], r["path"], r["query"], r["status"], r["fault"]) for r in body["requests"]]
    assert seen == [
        ("GET", f"/v2/droplets/{droplet_id}", "x=1", 200, None),
        ("GET", "/v2/droplets/999", "", 404, None),
        ("DELETE", f"/v2/droplets/{droplet_id}", "", 200, "lose_response"),
        ("GET", "/v2/actions", "", 401, None),
    ]
    seqs = [r["seq"] for r in body["requests"]]
    assert seqs == list(range(start + 1, start + 5)) and body["last_seq"] == start + 4
    # ?since= reads only what is newer; a reset empties the journal but numbers keep growing.
    newer = control.get("/_sim/requests", params={"since": start + 3}).json()["requests"]
    assert [r["seq"] for r in newer] == [start + 4]
    control.post("/_sim/reset").raise_for_status()
    assert control.get("/_sim/requests").json() == {"requests": [], "last_seq": start + 4}
    do.get("/v2/droplets")
    assert control.get("/_sim/requests").json()["requests"][0]["seq"] == start + 5
    assert control.get("/_sim/requests", params={"since": "-1"}).status_code == 400


def test_a_reset_clears_state_faults_and_rate_windows_but_keeps_the_config(
    do: httpx.Client, control: httpx.Client
) -> None:
    control.post("/_sim/config", json={"rate_limit_per_minute": 2})
    droplet_id = seed(control)
    act(do, droplet_id, type="snapshot", name="r")
    assert [do.get("/v2/droplets").status_code for _ in range(2)] == [200, 429]
    control.post("/_sim/faults", json={"kind": "error_500", "times": None})
    assert control.post("/_sim/reset").status_code == 204
    state = control.get("/_sim/state").json()
    assert state["droplets"] == state["snapshots"] == state["actions"] == []
    assert state["faults"] == [] and state["counters"]["requests"] == {} and state["counters"]["writes"] == {}
    assert do.get("/v2/droplets").json()["droplets"] == []  # no fault, fresh rate-limit window
    assert state["config"]["rate_limit_per_minute"] == 2  # the config survives a reset


def test_the_server_thread_frees_its_port_when_it_stops() -> None:
    with run_simulator_in_thread() as running:
        port = running.port
        assert running.base_url == f"http://127.0.0.1:{port}" and port > 0
        assert httpx.get(f"{running.base_url}/_sim/config").json()["time_scale"] == 1.0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_slow_response_applies_first_then_answers_late() -> None:
    import threading
    import time

    with (
        run_simulator_in_thread(SimulatorConfig(time_scale=0.01)) as sim,
        httpx.Client(base_url=sim.base_url, headers={"Authorization": "Bearer t"}, timeout=10) as client,
    ):
        droplet = client.post("/_sim/droplets", json={"name": "slow"}).json()["droplet"]["id"]
        client.post(
            "/_sim/faults",
            json={"kind": "slow_response", "method": "POST", "path": "/actions$", "seconds": 1.0},
        ).raise_for_status()
        answered: list[float] = []
        started = time.monotonic()
        poster = threading.Thread(
            target=lambda: answered.append(
                client.post(
                    f"/v2/droplets/{droplet}/actions", json={"type": "snapshot", "name": "s1"}
                ).status_code
            )
        )
        poster.start()
        time.sleep(0.3)
        writes = client.get("/_sim/state").json()["counters"]["writes"]
        assert writes.get("snapshot:s1") == 1  # applied while the reply is still held back
        assert answered == []
        poster.join(10)
        assert answered == [201]
        assert time.monotonic() - started >= 1.0


def test_the_control_routes_do_not_import_the_app_that_serves_them() -> None:
    """``app`` builds the ``/_sim`` routes from ``control``; ``control`` names what it needs as a Protocol."""
    import ast
    from pathlib import Path

    import sagas.digitalocean.simulator.control as control

    tree = ast.parse(Path(control.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "app" not in imported and "sagas.digitalocean.simulator.app" not in imported


def test_a_client_that_hangs_up_mid_request_leaves_no_traceback_in_the_simulators_log(
    server: RunningSimulator, control: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A runner killed while sending a POST (the crash matrix does it hundreds of times): the
    simulator has no one to answer, and says nothing."""
    import logging

    droplet_id = seed(control)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(caplog.handler)
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            raw.sendall(
                f"POST /v2/droplets/{droplet_id}/actions HTTP/1.1\r\nHost: sim\r\n"
                f"Authorization: {AUTH['Authorization']}\r\nContent-Type: application/json\r\n"
                'Content-Length: 100\r\n\r\n{"type": "snap'.encode()
            )
            time.sleep(0.2)  # the request is routed and waits for the rest of its body
        time.sleep(0.3)
        assert control.get("/_sim/state").status_code == 200  # still serving
    finally:
        uvicorn_errors.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
