"""Every simulator route, over real HTTP, validated against DigitalOcean's official OpenAPI description.

Each response (status, ``ratelimit-*`` header types, body) is checked with openapi-core against the
operation the spec gives for the request's method and path. The spec is loaded (and itself validated)
once per session. The simulator shares nothing with the project's client; this file checks the server
side on its own.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI

from sagas.digitalocean.simulator import RunningSimulator, SimulatorConfig, run_simulator_in_thread
from tests.support.openapi import SPEC_SERVER, OpenAPIRequest, OpenAPIResponse, load_openapi, raw_spec

AUTH = {"Authorization": "Bearer dop_v1_openapi-test"}
TIME_SCALE = 0.01  # a 2 s action takes 20 ms; the 3 s listing lag 30 ms


# --- fixtures (the spec and its httpx adapters: tests/support/openapi.py) -------------------------


@pytest.fixture(scope="session")
def openapi() -> OpenAPI:
    return load_openapi()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningSimulator]:
    with run_simulator_in_thread(SimulatorConfig(time_scale=TIME_SCALE)) as running:
        yield running


@pytest.fixture
def api(server: RunningSimulator, openapi: OpenAPI) -> Iterator[Callable[..., httpx.Response]]:
    """``api(method, path, status, **httpx kwargs)``: send, assert the status, validate against the spec."""
    server.app.reset()
    server.app.update_config(**SimulatorConfig(time_scale=TIME_SCALE).model_dump())
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=10) as client:

        def call(method: str, path: str, status: int, **kwargs: Any) -> httpx.Response:
            response = client.request(method, path, **kwargs)
            assert response.status_code == status, response.text
            openapi.validate_response(
                OpenAPIRequest(response.request, host_url=SPEC_SERVER), OpenAPIResponse(response)
            )
            return response

        yield call


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _create(api: Callable[..., httpx.Response], name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-22-04-x64", **extra}
    return dict(api("POST", "/v2/droplets", 202, json=body).json())


def _active(api: Callable[..., httpx.Response], server: RunningSimulator, name: str) -> int:
    droplet_id = int(_create(api, name)["droplet"]["id"])
    _eventually(lambda: server.app.world.get_droplet(droplet_id)["status"] == "active")
    return droplet_id


def _completed(server: RunningSimulator, action_id: int) -> None:
    _eventually(lambda: server.app.world.get_action(action_id)["status"] == "completed")


# --- the spec itself ------------------------------------------------------------------------------


def test_spec_quirk_droplet_status_off_is_false() -> None:
    """If this fails, the spec was fixed upstream and ``tests.support.openapi.fix_yaml_off`` can go."""
    droplet = raw_spec()["paths"]["/v2/droplets/{droplet_id}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["properties"]["droplet"]
    assert droplet["properties"]["status"]["enum"] == ["new", "active", False, "archive"]


# --- droplets -------------------------------------------------------------------------------------


def test_droplet_create_get_list_and_delete_answer_as_the_spec_says(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    created = _create(api, "web-1", tags=["env:test", "web"])
    droplet = created["droplet"]
    assert droplet["status"] == "new" and droplet["locked"] is False
    assert created["links"]["actions"][0]["rel"] == "create"
    action_id = created["links"]["actions"][0]["id"]
    assert api("GET", f"/v2/actions/{action_id}", 200).json()["action"]["type"] == "create"
    _completed(server, action_id)

    got = api("GET", f"/v2/droplets/{droplet['id']}", 200).json()["droplet"]
    assert got["status"] == "active" and got["networks"]["v4"]
    for i in range(2, 5):
        _create(api, f"web-{i}")
    page = api("GET", "/v2/droplets", 200, params={"per_page": 1, "page": 2}).json()
    assert page["meta"]["total"] == 4 and set(page["links"]["pages"]) == {"first", "prev", "next", "last"}
    assert [
        d["name"] for d in api("GET", "/v2/droplets", 200, params={"tag_name": "web"}).json()["droplets"]
    ] == ["web-1"]
    assert api("GET", "/v2/droplets", 200, params={"name": "web-3"}).json()["meta"]["total"] == 1

    api("DELETE", f"/v2/droplets/{droplet['id']}", 204)
    api("DELETE", f"/v2/droplets/{droplet['id']}", 404)
    api("DELETE", "/v2/droplets", 204, params={"tag_name": "nothing-has-this"})
    _eventually(lambda: not server.app.world.list_droplets(name="web-1"))
    api("GET", f"/v2/droplets/{droplet['id']}", 404)


def test_a_droplet_create_with_a_bad_size_or_name_is_a_422_the_spec_allows(
    api: Callable[..., httpx.Response],
) -> None:
    bad_size = {"name": "web-1", "region": "nyc3", "size": "huge", "image": "ubuntu-22-04-x64"}
    assert api("POST", "/v2/droplets", 422, json=bad_size).json()["id"] == "unprocessable_entity"
    bad_name = {**bad_size, "size": "s-1vcpu-1gb", "name": "bad name!"}
    api("POST", "/v2/droplets", 422, json=bad_name)


def test_creating_several_droplets_and_deleting_by_tag_answer_as_the_spec_says(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    body = {"names": ["a-1", "a-2"], "size": "s-1vcpu-1gb", "image": "debian-12-x64", "tags": ["batch"]}
    created = api("POST", "/v2/droplets", 202, json=body).json()
    assert [d["name"] for d in created["droplets"]] == ["a-1", "a-2"]
    api("DELETE", "/v2/droplets", 204, params={"tag_name": "batch"})
    _eventually(lambda: not server.app.world.list_droplets(tag_name="batch"))
    assert api("GET", "/v2/droplets", 200, params={"tag_name": "batch"}).json()["droplets"] == []


def test_powered_off_droplet_validates_with_the_quirk_fixed(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    droplet_id = _active(api, server, "off-1")
    action = api("POST", f"/v2/droplets/{droplet_id}/actions", 201, json={"type": "power_off"}).json()[
        "action"
    ]
    _completed(server, action["id"])
    _eventually(lambda: server.app.world.get_droplet(droplet_id)["status"] == "off")
    assert api("GET", f"/v2/droplets/{droplet_id}", 200).json()["droplet"]["status"] == "off"
    resize = {"type": "resize", "size": "s-2vcpu-4gb", "disk": True}
    api("POST", f"/v2/droplets/{droplet_id}/actions", 201, json=resize)


# --- actions --------------------------------------------------------------------------------------


def test_droplet_action_routes_answer_as_the_spec_says_and_refuse_while_one_is_pending(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    droplet_id = _active(api, server, "act-1")
    server.app.update_config(action_seconds_by_type={"snapshot": 50.0})  # pending long enough to see
    base = f"/v2/droplets/{droplet_id}/actions"
    action = api("POST", base, 201, json={"type": "snapshot", "name": "snap-1"}).json()["action"]
    assert action["status"] == "in-progress" and action["completed_at"] is None
    assert action["resource_id"] == droplet_id and action["resource_type"] == "droplet"

    pending = api("POST", base, 422, json={"type": "power_off"}).json()
    assert pending["id"] == "unprocessable_entity" and "pending event" in pending["message"]
    api("POST", base, 422, json={"type": "teleport"})
    api("POST", base, 422, json={"type": "resize", "size": "s-2vcpu-4gb"})  # while pending
    api("POST", "/v2/droplets/999999/actions", 404, json={"type": "power_off"})

    listed = api("GET", base, 200).json()
    assert [a["type"] for a in listed["actions"]] == ["snapshot", "create"]  # newest first
    api("GET", f"{base}/{action['id']}", 200)
    api("GET", f"{base}/1", 404)
    api("GET", "/v2/droplets/999999/actions", 404)
    _completed(server, action["id"])
    done = api("GET", f"/v2/actions/{action['id']}", 200).json()["action"]
    assert done["status"] == "completed" and done["completed_at"]
    assert api("GET", "/v2/actions", 200, params={"per_page": 1}).json()["meta"]["total"] == 2
    api("GET", "/v2/actions/1", 404)
    api("POST", base, 422, json={"type": "resize", "size": "s-2vcpu-4gb"})  # droplet is on


def test_reboot_power_rebuild_rename_and_backup_actions_complete_as_the_spec_says(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    droplet_id = _active(api, server, "types-1")
    bodies: list[dict[str, Any]] = [
        {"type": "reboot"},
        {"type": "power_cycle"},
        {"type": "shutdown"},
        {"type": "power_on"},
        {"type": "rebuild", "image": "ubuntu-24-04-x64"},
        {"type": "rename", "name": "types-2"},
        {"type": "enable_backups"},
        {"type": "disable_backups"},
    ]
    for body in bodies:
        action = api("POST", f"/v2/droplets/{droplet_id}/actions", 201, json=body).json()["action"]
        assert action["type"] == body["type"]
        _completed(server, action["id"])
    assert api("GET", f"/v2/droplets/{droplet_id}", 200).json()["droplet"]["name"] == "types-2"


# --- snapshots and images -------------------------------------------------------------------------


def test_snapshot_and_image_routes_list_get_restore_and_delete_as_the_spec_says(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    droplet_id = _active(api, server, "snap-src")
    action = api("POST", f"/v2/droplets/{droplet_id}/actions", 201, json={"type": "snapshot"}).json()[
        "action"
    ]
    _completed(server, action["id"])
    _eventually(lambda: bool(server.app.world.list_droplet_snapshots(droplet_id)))

    listed = api("GET", f"/v2/droplets/{droplet_id}/snapshots", 200).json()
    snap = listed["snapshots"][0]
    assert (
        isinstance(snap["id"], int) and snap["name"].startswith("snap-src-") and listed["meta"]["total"] == 1
    )
    api("GET", "/v2/droplets/999999/snapshots", 404)

    everywhere = api("GET", "/v2/snapshots", 200, params={"resource_type": "droplet"}).json()["snapshots"]
    assert everywhere[0]["id"] == str(snap["id"]) and everywhere[0]["resource_id"] == str(droplet_id)
    assert api("GET", "/v2/snapshots", 200, params={"resource_type": "volume"}).json()["meta"]["total"] == 0
    assert api("GET", f"/v2/snapshots/{snap['id']}", 200).json()["snapshot"]["id"] == str(snap["id"])

    image = api("GET", f"/v2/images/{snap['id']}", 200).json()["image"]
    assert image["type"] == "snapshot" and image["public"] is False
    assert api("GET", "/v2/images/ubuntu-22-04-x64", 200).json()["image"]["type"] == "base"
    api("GET", "/v2/images/no-such-image", 404)

    restore = {"type": "restore", "image": snap["id"]}
    _completed(
        server, api("POST", f"/v2/droplets/{droplet_id}/actions", 201, json=restore).json()["action"]["id"]
    )

    api("DELETE", f"/v2/snapshots/{snap['id']}", 204)
    api("GET", f"/v2/snapshots/{snap['id']}", 404)
    api("DELETE", f"/v2/snapshots/{snap['id']}", 404)


# --- power, resize, restore, rebuild ---------------------------------------------------------------


def test_power_resize_restore_and_rebuild_answers_and_refusals_match_the_spec(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    droplet_id = _active(api, server, "life-1")
    base = f"/v2/droplets/{droplet_id}/actions"

    def run(body: dict[str, Any]) -> dict[str, Any]:
        action: dict[str, Any] = api("POST", base, 201, json=body).json()["action"]
        assert action["type"] == body["type"] and action["status"] == "in-progress"
        _completed(server, action["id"])
        return action

    def status() -> str:
        return str(api("GET", f"/v2/droplets/{droplet_id}", 200).json()["droplet"]["status"])

    snapshot = run({"type": "snapshot", "name": "life-1-base"})
    assert snapshot["resource_id"] == droplet_id
    _eventually(lambda: bool(server.app.world.list_droplet_snapshots(droplet_id)))
    snap_id = api("GET", f"/v2/droplets/{droplet_id}/snapshots", 200).json()["snapshots"][0]["id"]

    run({"type": "shutdown"})
    _eventually(lambda: status() == "off")
    run({"type": "shutdown"})  # already off: a shutdown is still an action that completes
    refused = api("POST", base, 422, json={"type": "power_off"}).json()  # a power_off is refused
    assert refused["message"] == "Droplet is already powered off."
    assert (
        api("POST", base, 422, json={"type": "resize", "size": "nope"}).json()["id"] == "unprocessable_entity"
    )
    same = api("POST", base, 422, json={"type": "resize", "size": "s-1vcpu-1gb"}).json()
    assert same["message"] == "The droplet is already set to this size."
    run({"type": "resize", "size": "s-2vcpu-4gb", "disk": True})
    smaller = api("POST", base, 422, json={"type": "resize", "size": "s-2vcpu-2gb"}).json()
    assert smaller["message"] == "Size can not decrease size of Droplet's disk image"
    backups = api("POST", base, 422, json={"type": "disable_backups"}).json()
    assert backups["message"] == "Backups have already been disabled on this Droplet."
    droplet = api("GET", f"/v2/droplets/{droplet_id}", 200).json()["droplet"]
    assert (droplet["size_slug"], droplet["memory"], droplet["vcpus"], droplet["disk"]) == (
        "s-2vcpu-4gb",
        4096,
        2,
        80,
    )
    run({"type": "power_on"})
    _eventually(lambda: status() == "active")
    run({"type": "restore", "image": snap_id})
    api("POST", base, 422, json={"type": "restore", "image": 999999})
    run({"type": "rebuild", "image": "debian-12-x64"})
    run({"type": "rebuild", "image": 129211873})


# --- domain records -------------------------------------------------------------------------------


def test_domain_record_routes_create_list_get_delete_and_refuse_as_the_spec_says(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    server.app.world.seed_domain({"name": "example.com"})
    base = "/v2/domains/example.com/records"
    created = []
    for body in (
        {"type": "A", "name": "www", "data": "192.0.2.10"},
        {"type": "AAAA", "name": "www", "data": "2001:db8::10", "ttl": 300},
        {"type": "CNAME", "name": "blog", "data": "www.example.com."},
        {"type": "TXT", "name": "_acme-challenge", "data": "abc123"},
        {"type": "MX", "name": "@", "data": "mail.example.com.", "priority": 10},
    ):
        record = api("POST", base, 201, json=body).json()["domain_record"]
        assert record["type"] == body["type"] and record["ttl"] == body.get("ttl", 1800)
        created.append(record)

    listed = api("GET", base, 200, params={"per_page": 3}).json()
    assert listed["meta"]["total"] == 9 and set(listed["links"]["pages"]) == {"next", "last"}
    last = api("GET", base, 200, params={"per_page": 3, "page": 3}).json()
    assert set(last["links"]["pages"]) == {"first", "prev"}
    only = api("GET", base, 200, params={"name": "www.example.com", "type": "AAAA"}).json()
    assert [r["data"] for r in only["domain_records"]] == ["2001:db8::10"] and only["links"] == {}

    record_id = created[0]["id"]
    assert api("GET", f"{base}/{record_id}", 200).json()["domain_record"] == created[0]
    api("DELETE", f"{base}/{record_id}", 204)
    api("GET", f"{base}/{record_id}", 404)
    api("DELETE", f"{base}/{record_id}", 404)

    invalid = api("POST", base, 422, json={"type": "A", "name": "www", "data": "not-an-ip"}).json()
    assert invalid["id"] == "unprocessable_entity" and "IPv4" in invalid["message"]
    api("POST", base, 422, json={"type": "CNAME", "name": "www", "data": "x.example.com"})
    for method, path in (
        ("GET", "/v2/domains/nope.com/records"),
        ("GET", f"/v2/domains/nope.com/records/{record_id}"),
    ):
        assert api(method, path, 404).json()["id"] == "not_found"
    api("POST", "/v2/domains/nope.com/records", 404, json={"type": "TXT", "name": "x", "data": "y"})
    api("DELETE", f"/v2/domains/nope.com/records/{created[1]['id']}", 404)
    api("GET", base, 401, headers={"Authorization": ""})


def test_domain_record_500_and_429_answers_match_the_spec(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    server.app.world.seed_domain({"name": "example.com"})
    server.app.add_faults({"kind": "error_500", "method": "POST", "path": "/records$"})
    body = {"type": "A", "name": "www", "data": "192.0.2.1"}
    assert api("POST", "/v2/domains/example.com/records", 500, json=body).json()["id"] == "server_error"
    server.app.update_config(rate_limit_per_minute=2)  # the faulted POST counted as one
    api("GET", "/v2/domains/example.com/records", 200)
    limited = api("DELETE", "/v2/domains/example.com/records/1", 429)
    assert int(limited.headers["retry-after"]) >= 1


# --- the edge: auth, rate limits, injected faults -------------------------------------------------


def test_a_request_without_a_token_is_a_401_the_spec_allows(api: Callable[..., httpx.Response]) -> None:
    for path in ("/v2/actions", "/v2/droplets", "/v2/snapshots", "/v2/droplets/1"):
        body = api("GET", path, 401, headers={"Authorization": ""}).json()
        assert body["id"] == "unauthorized" and body["message"] == "Unable to authenticate you"


def test_requests_over_the_rate_limit_are_429s_the_spec_allows(
    api: Callable[..., httpx.Response], server: RunningSimulator
) -> None:
    server.app.update_config(rate_limit_per_minute=2)
    api("GET", "/v2/actions", 200)
    api("GET", "/v2/droplets", 200)
    limited = api("GET", "/v2/snapshots", 429)
    assert limited.json()["id"] == "too_many_requests" and int(limited.headers["retry-after"]) >= 1
    api("GET", "/v2/actions/1", 429)


def test_injected_faults_follow_the_spec_where_the_real_api_does(
    api: Callable[..., httpx.Response], server: RunningSimulator, openapi: OpenAPI
) -> None:
    server.app.add_faults(
        {"kind": "error_500", "method": "GET", "path": "^/v2/droplets$"},
        {"kind": "rate_limit_429", "method": "GET", "path": "^/v2/droplets$"},
        {"kind": "error_503_html", "method": "GET", "path": "^/v2/droplets$"},
    )
    assert api("GET", "/v2/droplets", 500).json()["id"] == "server_error"
    assert api("GET", "/v2/droplets", 429).headers["retry-after"] == "1"
    # An edge 503 is an HTML page, which the spec does not describe (every response is JSON there): the
    # real API does this, so the simulator does too, and the spec rightly rejects it.
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        html = client.get("/v2/droplets")
    assert html.status_code == 503 and html.headers["content-type"].startswith("text/html")
    with pytest.raises(Exception, match=r"(?i)content|media|type"):
        openapi.validate_response(OpenAPIRequest(html.request, host_url=SPEC_SERVER), OpenAPIResponse(html))


def test_spec_checks_are_not_vacuous(api: Callable[..., httpx.Response], openapi: OpenAPI) -> None:
    """A droplet missing a required field must fail, or the checks above prove nothing."""
    response = api(
        "POST", "/v2/droplets", 202, json={"name": "v-1", "size": "s-1vcpu-1gb", "image": 129211873}
    )
    broken = copy.deepcopy(response.json())
    del broken["droplet"]["networks"]
    forged = httpx.Response(
        202, json=broken, headers={"content-type": "application/json"}, request=response.request
    )
    with pytest.raises(Exception, match=r"(?i)invalid|validat"):
        openapi.validate_response(
            OpenAPIRequest(forged.request, host_url=SPEC_SERVER), OpenAPIResponse(forged)
        )
