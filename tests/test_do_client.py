"""DigitalOceanClient against a fake DigitalOcean behind httpx.MockTransport.

The fake plays the server: it receives real ``httpx.Request`` objects, checks every one against
DigitalOcean's official OpenAPI description, and answers with real ``httpx.Response`` objects (or
raises the httpx exception a broken network would). Nothing of ours is patched; retries wait through
the client's ``RetryPolicy.sleep`` (``sagas.retry``), which the tests replace with a recorder.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from pydantic import SecretStr

from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient
from sagas.digitalocean.models import (
    DomainRecordCreateRequest,
    DropletActionRequest,
    DropletCreateRequest,
    PowerOffActionRequest,
    PowerOnActionRequest,
    RebuildActionRequest,
    ResizeActionRequest,
    RestoreActionRequest,
    ShutdownActionRequest,
    SnapshotActionRequest,
)
from sagas.digitalocean.ratelimit import RateBudget
from sagas.errors import (
    AmbiguousWriteError,
    InputError,
    PendingEventError,
    ProviderError,
    ProviderNotFoundError,
    ProviderNotReachedError,
    ProviderRejectedError,
    ProviderResponseError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sagas.settings import Settings, TokenPurpose
from tests.support.openapi import SPEC_SERVER, OpenAPIRequest, OpenAPIResponse, fixed_spec, load_openapi

BASE_URL = SPEC_SERVER
TOKEN = SecretStr("dop_v1_" + "5ec7e7" * 10 + "abcd")
DROPLET_ID = 3164444

Responder = Callable[[httpx.Request], httpx.Response]


# --- the spec, parsed once per session (tests/support/openapi.py) --------------------------------


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return load_openapi()


@pytest.fixture(scope="module")
def spec_json() -> dict[str, Any]:
    return fixed_spec()


# --- realistic bodies, shaped like the spec's own examples --------------------------------------


def _example(spec: dict[str, Any], path: str, method: str, status: str) -> Any:
    content = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
    if "example" in content:
        return copy.deepcopy(content["example"])
    if "example" in content.get("schema", {}):
        return copy.deepcopy(content["schema"]["example"])
    return copy.deepcopy(next(iter(content["examples"].values()))["value"])


def droplet_json(spec: dict[str, Any], droplet_id: int = DROPLET_ID, **overrides: Any) -> dict[str, Any]:
    droplet: dict[str, Any] = _example(spec, "/v2/droplets/{droplet_id}", "get", "200")["droplet"]
    droplet.update(id=droplet_id, **overrides)
    return droplet


def action_json(
    action_id: int = 36804636, status: str = "in-progress", type_: str = "snapshot"
) -> dict[str, Any]:
    return {
        "id": action_id,
        "status": status,
        "type": type_,
        "started_at": "2020-11-14T16:29:21Z",
        "completed_at": None if status == "in-progress" else "2020-11-14T16:30:06Z",
        "resource_id": DROPLET_ID,
        "resource_type": "droplet",
        "region": {
            "name": "New York 3",
            "slug": "nyc3",
            "features": ["private_networking", "backups", "ipv6", "metadata"],
            "available": True,
            "sizes": ["s-1vcpu-1gb"],
        },
        "region_slug": "nyc3",
    }


def droplet_snapshot_json(
    snapshot_id: int, name: str, created_at: str = "2020-07-28T16:47:44Z"
) -> dict[str, Any]:
    return {
        "id": snapshot_id,
        "name": name,
        "created_at": created_at,
        "regions": ["nyc3"],
        "min_disk_size": 25,
        "size_gigabytes": 2.34,
        "type": "snapshot",
    }


def snapshot_json(snapshot_id: str, name: str) -> dict[str, Any]:
    return {
        "id": snapshot_id,
        "name": name,
        "created_at": "2020-07-28T16:47:44Z",
        "regions": ["nyc3", "sfo3"],
        "min_disk_size": 25,
        "size_gigabytes": 2.34,
        "resource_id": str(DROPLET_ID),
        "resource_type": "droplet",
        "tags": ["web"],
    }


def domain_record_json(
    record_id: int, type_: str = "A", name: str = "www", data: str = "162.10.66.0"
) -> dict[str, Any]:
    return {
        "id": record_id,
        "type": type_,
        "name": name,
        "data": data,
        "priority": None,
        "port": None,
        "ttl": 1800,
        "weight": None,
        "flags": None,
        "tag": None,
    }


def rate_headers(remaining: int = 4816) -> dict[str, str]:
    return {
        "ratelimit-limit": "5000",
        "ratelimit-remaining": str(remaining),
        "ratelimit-reset": str(int(time.time()) + 60),
    }


def ok(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers={**rate_headers(), **(headers or {})})


def error(status: int, error_id: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"id": error_id, "message": message, "request_id": "4d9d8375-3c56-4925-a3e7-eb137fed17e9"}
    return httpx.Response(status, json=body, headers={**rate_headers(), **(headers or {})})


def no_content() -> httpx.Response:
    return httpx.Response(204, headers=rate_headers())


def html(status: int) -> httpx.Response:
    page = f"<html><head><title>{status}</title></head><body><h1>Bad Gateway</h1></body></html>"
    return httpx.Response(status, text=page, headers={"content-type": "text/html"})


# --- the fake server ------------------------------------------------------------------------------


class FakeDigitalOcean:
    """Plays api.digitalocean.com: validates each request against the spec, then answers from
    scripted routes. A script item is a Response, an httpx exception to raise, or a responder."""

    def __init__(self, openapi: OpenAPI) -> None:
        self._openapi = openapi
        self._routes: dict[tuple[str, str], list[httpx.Response | Exception | Responder]] = {}
        self.requests: list[httpx.Request] = []
        self.check_responses = True

    def on(self, method: str, path: str, *script: httpx.Response | Exception | Responder) -> None:
        """Answer ``method path`` with the script items in turn; the last one repeats forever."""
        self._routes[(method, path)] = list(script)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # Raises (and fails the test) on any request DigitalOcean's spec does not allow.
        self._openapi.validate_request(OpenAPIRequest(request))
        script = self._routes.get((request.method, request.url.path))
        if script is None:
            return error(404, "not_found", "The resource you were accessing could not be found.")
        item = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(item, Exception):
            raise item
        response = item if isinstance(item, httpx.Response) else item(request)
        if self.check_responses and response.status_code < 300:
            # Our fake bodies must be real DigitalOcean bodies, or the happy paths prove nothing.
            self._openapi.validate_response(OpenAPIRequest(request), OpenAPIResponse(response))
        return response

    def sent(self, method: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if method is None or r.method == method]


@pytest.fixture
def fake(openapi: OpenAPI) -> FakeDigitalOcean:
    return FakeDigitalOcean(openapi)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(
    fake: FakeDigitalOcean,
    sleeps: list[float],
    *,
    budget: RateBudget | None = None,
    max_rate_limit_wait: float = 120.0,
    **retry: Any,
) -> DigitalOceanClient:
    http = httpx.Client(base_url=BASE_URL, transport=httpx.MockTransport(fake))
    return DigitalOceanClient(
        http,
        TOKEN,
        budget=budget,
        retry=DEFAULT_RETRY.replace(sleep=sleeps.append, **retry),
        max_rate_limit_wait=max_rate_limit_wait,
    )


@pytest.fixture
def client(fake: FakeDigitalOcean, sleeps: list[float]) -> Iterator[DigitalOceanClient]:
    do = make_client(fake, sleeps)
    yield do
    do.close()


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --- the spec check itself works ------------------------------------------------------------------


def test_the_spec_check_rejects_a_request_digitalocean_would_refuse(openapi: OpenAPI) -> None:
    bad = httpx.Request(
        "POST",
        f"{BASE_URL}/v2/droplets/{DROPLET_ID}/actions",
        json={"type": "teleport"},
        headers={"Authorization": "Bearer x"},
    )
    with pytest.raises(Exception, match="body"):
        openapi.validate_request(OpenAPIRequest(bad))


# --- happy paths ----------------------------------------------------------------------------------


def test_a_droplet_is_read_into_its_typed_model_with_the_token_and_user_agent_sent(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", ok(200, {"droplet": droplet_json(spec_json)}))

    droplet = client.get_droplet(DROPLET_ID)

    assert droplet.id == DROPLET_ID
    assert droplet.name == "example.com"
    assert droplet.status == "active"
    assert droplet.locked is False
    assert droplet.size_slug == "s-1vcpu-1gb"
    assert droplet.region_slug == "nyc3"
    assert droplet.image.slug == "ubuntu-20-04-x64"
    assert droplet.image.id == 63663980
    assert droplet.tags == ["web", "env:prod"]
    assert droplet.public_ipv4 == "192.241.165.154"
    assert droplet.created_at.year == 2020
    (request,) = fake.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN.get_secret_value()}"
    assert request.headers["user-agent"] == "arcadia-sagas/0.1"
    assert request.headers["content-type"] == "application/json"


def test_unknown_response_fields_are_ignored(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    fake.check_responses = False
    body = droplet_json(spec_json, shiny_new_field={"nested": [1, 2]}, status="archive")
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", ok(200, {"droplet": body}))
    assert client.get_droplet(DROPLET_ID).status == "archive"


def _paged(
    key: str, pages: list[list[dict[str, Any]]], path: str
) -> Callable[[httpx.Request], httpx.Response]:
    """A responder serving ``pages`` by the ``page`` query parameter, with absolute next links."""

    def respond(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params.get("page", "1"))
        per_page = request.url.params.get("per_page", "20")
        links: dict[str, Any] = {}
        if number < len(pages):
            # Like the real API: the next link repeats the request's filters.
            extra = "".join(
                f"&{k}={v}" for k, v in request.url.params.multi_items() if k not in ("page", "per_page")
            )
            links = {"pages": {"next": f"{BASE_URL}{path}?page={number + 1}&per_page={per_page}{extra}"}}
        total = sum(len(p) for p in pages)
        return ok(200, {key: pages[number - 1], "links": links, "meta": {"total": total}})

    return respond


def test_list_droplets_follows_three_pages_with_the_filter(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    pages = [[droplet_json(spec_json, droplet_id=n, name=f"web-{n}")] for n in (1, 2, 3)]
    fake.on("GET", "/v2/droplets", _paged("droplets", pages, "/v2/droplets"))

    droplets = client.list_droplets(tag_name="env:prod")

    assert [d.id for d in droplets] == [1, 2, 3]
    assert [r.url.params["page"] for r in fake.requests[1:]] == ["2", "3"]
    assert all(r.url.params["tag_name"] == "env:prod" for r in fake.requests)
    assert all(r.url.params["per_page"] == "200" for r in fake.requests)


def test_listing_droplets_by_name_sends_the_name_and_no_tag_filter(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    fake.on(
        "GET",
        "/v2/droplets",
        ok(200, {"droplets": [droplet_json(spec_json)], "links": {}, "meta": {"total": 1}}),
    )
    assert [d.name for d in client.list_droplets(name="example.com")] == ["example.com"]
    assert fake.requests[0].url.params["name"] == "example.com"
    assert "tag_name" not in fake.requests[0].url.params


def test_creating_a_droplet_sends_the_fields_set_without_nulls_and_reads_the_new_droplet(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    created = _example(spec_json, "/v2/droplets", "post", "202")  # droplet + links.actions
    fake.on("POST", "/v2/droplets", ok(202, created))
    req = DropletCreateRequest(
        name="example.com",
        region="nyc3",
        size="s-1vcpu-1gb",
        image="ubuntu-20-04-x64",
        ssh_keys=[289794, "3b:16:e4:bf:8b:00:8b:b8:59:8c:a9:d3:f0:19:fa:45"],
        tags=["arcadia", "saga:1234"],
    )

    droplet = client.create_droplet(req)

    assert droplet.status == "new"
    assert droplet.public_ipv4 is None
    sent = body_of(fake.requests[0])
    assert sent["name"] == "example.com"
    assert sent["image"] == "ubuntu-20-04-x64"
    assert sent["tags"] == ["arcadia", "saga:1234"]
    assert "user_data" not in sent  # None fields are left out, not sent as null


def test_deleting_a_droplet_sends_one_delete_and_takes_the_204(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("DELETE", f"/v2/droplets/{DROPLET_ID}", no_content())
    client.delete_droplet(DROPLET_ID)
    assert len(fake.sent("DELETE")) == 1


def test_a_droplet_snapshot_is_one_snapshot_action_on_the_droplet_read_in_progress(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("POST", f"/v2/droplets/{DROPLET_ID}/actions", ok(201, {"action": action_json()}))

    action = client.create_droplet_snapshot(DROPLET_ID, "arcadia-snap-3164444-1a2b3c4d")

    assert action.status == "in-progress"
    assert action.type == "snapshot"
    assert action.resource_id == DROPLET_ID  # the droplet, not the snapshot
    assert action.completed_at is None
    assert action.region_slug == "nyc3"
    assert body_of(fake.requests[0]) == {"type": "snapshot", "name": "arcadia-snap-3164444-1a2b3c4d"}


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (PowerOffActionRequest(), {"type": "power_off"}),
        (PowerOnActionRequest(), {"type": "power_on"}),
        (ShutdownActionRequest(), {"type": "shutdown"}),
        (
            ResizeActionRequest(size="s-2vcpu-2gb", disk=True),
            {"type": "resize", "size": "s-2vcpu-2gb", "disk": True},
        ),
        (RestoreActionRequest(image=12389723), {"type": "restore", "image": 12389723}),
        (RebuildActionRequest(image="ubuntu-20-04-x64"), {"type": "rebuild", "image": "ubuntu-20-04-x64"}),
        (SnapshotActionRequest(name="nightly"), {"type": "snapshot", "name": "nightly"}),
    ],
)
def test_every_droplet_action_request_is_sent_as_its_own_body(
    client: DigitalOceanClient, fake: FakeDigitalOcean, req: DropletActionRequest, expected: dict[str, Any]
) -> None:
    fake.on(
        "POST",
        f"/v2/droplets/{DROPLET_ID}/actions",
        ok(201, {"action": action_json(type_=str(expected["type"]))}),
    )
    action = client.post_droplet_action(DROPLET_ID, req)
    assert action.type == expected["type"]
    assert body_of(fake.requests[0]) == expected


def test_a_completed_action_is_read_with_its_completion_time(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("GET", "/v2/actions/36804636", ok(200, {"action": action_json(status="completed")}))
    action = client.get_action(36804636)
    assert action.status == "completed"
    assert action.completed_at is not None


def test_listing_droplet_actions_stops_at_the_default_page_limit(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    path = f"/v2/droplets/{DROPLET_ID}/actions"
    pages = [[action_json(action_id=n, status="completed")] for n in (30, 20, 10)]
    fake.on("GET", path, _paged("actions", pages, path))

    assert [a.id for a in client.list_droplet_actions(DROPLET_ID)] == [30, 20]
    assert len(fake.requests) == 2


def test_listing_droplet_actions_without_a_page_limit_reads_every_page(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    path = f"/v2/droplets/{DROPLET_ID}/actions"
    pages = [[action_json(action_id=n, status="completed")] for n in (30, 20, 10)]
    fake.on("GET", path, _paged("actions", pages, path))
    assert [a.id for a in client.list_droplet_actions(DROPLET_ID, max_pages=None)] == [30, 20, 10]


def test_list_droplet_snapshots_follows_three_pages(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    path = f"/v2/droplets/{DROPLET_ID}/snapshots"
    pages = [
        [droplet_snapshot_json(1, "a"), droplet_snapshot_json(2, "b")],
        [droplet_snapshot_json(3, "c")],
        [droplet_snapshot_json(4, "d")],
    ]
    fake.on("GET", path, _paged("snapshots", pages, path))

    snapshots = client.list_droplet_snapshots(DROPLET_ID)

    assert [s.id for s in snapshots] == ["1", "2", "3", "4"]  # integer ids, normalised to str
    assert {s.resource_id for s in snapshots} == {str(DROPLET_ID)}
    assert {s.resource_type for s in snapshots} == {"droplet"}
    assert len(fake.requests) == 3
    assert all(r.url.params["per_page"] == "200" for r in fake.requests)


def test_pagination_links_are_followed_by_path_on_our_own_host(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    path = f"/v2/droplets/{DROPLET_ID}/snapshots"
    elsewhere = f"https://evil.example.net{path}?page=2&per_page=200"
    fake.on(
        "GET",
        path,
        ok(
            200,
            {
                "snapshots": [droplet_snapshot_json(1, "a")],
                "links": {"pages": {"next": elsewhere}},
                "meta": {"total": 2},
            },
        ),
        ok(200, {"snapshots": [droplet_snapshot_json(2, "b")], "links": {}, "meta": {"total": 2}}),
    )
    assert [s.id for s in client.list_droplet_snapshots(DROPLET_ID)] == ["1", "2"]
    assert {r.url.host for r in fake.requests} == {"api.digitalocean.com"}


def test_a_pagination_loop_is_a_response_error(client: DigitalOceanClient, fake: FakeDigitalOcean) -> None:
    path = f"/v2/droplets/{DROPLET_ID}/snapshots"
    again = f"{BASE_URL}{path}?page=1&per_page=200"
    fake.on(
        "GET",
        path,
        ok(200, {"snapshots": [], "links": {"pages": {"next": again}}, "meta": {"total": 0}}),
    )
    with pytest.raises(ProviderResponseError, match="pagination"):
        client.list_droplet_snapshots(DROPLET_ID)


def test_a_snapshot_found_by_name_is_the_oldest_of_duplicates_or_none(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    path = f"/v2/droplets/{DROPLET_ID}/snapshots"
    snaps = [
        droplet_snapshot_json(7, "other"),
        droplet_snapshot_json(9, "arcadia-snap-3164444-1a2b3c4d", "2020-07-28T17:00:00Z"),
        droplet_snapshot_json(8, "arcadia-snap-3164444-1a2b3c4d", "2020-07-28T16:50:00Z"),
    ]
    fake.on("GET", path, ok(200, {"snapshots": snaps, "links": {}, "meta": {"total": 3}}))

    found = client.find_droplet_snapshot_by_name(DROPLET_ID, "arcadia-snap-3164444-1a2b3c4d")
    assert found is not None
    assert found.id == "8"  # the oldest of a duplicate pair
    assert client.find_droplet_snapshot_by_name(DROPLET_ID, "arcadia-snap-3164444-ffffffff") is None


def test_a_snapshot_is_read_with_its_droplet_and_its_sizes(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("GET", "/v2/snapshots/6372321", ok(200, {"snapshot": snapshot_json("6372321", "web-01")}))
    snapshot = client.get_snapshot("6372321")
    assert snapshot.id == "6372321"
    assert snapshot.resource_id == str(DROPLET_ID)
    assert snapshot.min_disk_size == 25
    assert snapshot.size_gigabytes == pytest.approx(2.34)


def test_deleting_a_snapshot_sends_one_delete_to_its_path(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("DELETE", "/v2/snapshots/6372321", no_content())
    client.delete_snapshot("6372321")
    assert [r.url.path for r in fake.sent("DELETE")] == ["/v2/snapshots/6372321"]


def test_delete_snapshot_that_is_gone_is_not_found(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on(
        "DELETE",
        "/v2/snapshots/6372321",
        error(404, "not_found", "The resource you were accessing could not be found."),
    )
    with pytest.raises(ProviderNotFoundError) as caught:
        client.delete_snapshot("6372321")
    assert caught.value.status_code == 404
    assert caught.value.request_id == "4d9d8375-3c56-4925-a3e7-eb137fed17e9"


def test_droplet_exposes_size_and_power_fields(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    body = droplet_json(
        spec_json, status="active", locked=True, size_slug="s-2vcpu-4gb", memory=4096, vcpus=2, disk=80
    )
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", ok(200, {"droplet": body}))
    droplet = client.get_droplet(DROPLET_ID)
    assert (droplet.status, droplet.locked, droplet.size_slug) == ("active", True, "s-2vcpu-4gb")
    assert (droplet.memory, droplet.vcpus, droplet.disk) == (4096, 2, 80)
    assert droplet.tags == ["web", "env:prod"]


def test_find_droplets_by_tag_follows_every_page(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    pages = [[droplet_json(spec_json, droplet_id=n, tags=["saga:1"])] for n in (1, 2, 3)]
    fake.on("GET", "/v2/droplets", _paged("droplets", pages, "/v2/droplets"))
    assert [d.id for d in client.find_droplets_by_tag("saga:1")] == [1, 2, 3]
    assert all(r.url.params["tag_name"] == "saga:1" for r in fake.requests)
    with pytest.raises(InputError):
        client.find_droplets_by_tag("")
    assert len(fake.requests) == 3


# --- domain records -------------------------------------------------------------------------------

RECORDS = "/v2/domains/example.com/records"
SPEC_RECORDS = "/v2/domains/{domain_name}/records"


def test_list_domain_records_follows_pages_with_both_filters(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    pages = [[domain_record_json(n, data=f"192.0.2.{n}")] for n in (1, 2, 3)]
    fake.on("GET", RECORDS, _paged("domain_records", pages, RECORDS))

    records = client.list_domain_records("example.com", name="www.example.com", type="A")

    assert [r.id for r in records] == [1, 2, 3]
    assert [r.data for r in records] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert records[0].fqdn("example.com") == "www.example.com"
    assert [r.url.params.get("page") for r in fake.requests] == [None, "2", "3"]
    assert all(r.url.params["name"] == "www.example.com" for r in fake.requests)
    assert all(r.url.params["type"] == "A" for r in fake.requests)
    assert all(r.url.params["per_page"] == "200" for r in fake.requests)


def test_listing_domain_records_unfiltered_sends_no_filter_and_takes_a_trailing_dot(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    fake.on("GET", RECORDS, ok(200, _example(spec_json, SPEC_RECORDS, "get", "200")))
    records = client.list_domain_records("example.com.")  # a trailing dot is fine
    assert [(r.type, r.name) for r in records][:2] == [("NS", "@"), ("NS", "@")]
    assert records[0].fqdn("example.com") == "example.com"
    assert "name" not in fake.requests[0].url.params and "type" not in fake.requests[0].url.params


def test_creating_a_domain_record_sends_the_request_and_returns_the_record_the_provider_answered(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    fake.on("POST", RECORDS, ok(201, _example(spec_json, SPEC_RECORDS, "post", "201")))

    record = client.create_domain_record(
        "example.com", DomainRecordCreateRequest(type="A", name="www", data="162.10.66.0", ttl=300)
    )

    assert (record.id, record.type, record.name, record.data, record.ttl) == (
        28448433,
        "A",
        "www",
        "162.10.66.0",
        1800,
    )
    assert body_of(fake.requests[0]) == {"type": "A", "name": "www", "data": "162.10.66.0", "ttl": 300}


@pytest.mark.parametrize(
    "req",
    [
        DomainRecordCreateRequest(type="AAAA", name="www", data="2001:db8::1"),
        DomainRecordCreateRequest(type="CNAME", name="blog", data="www.example.com."),
        DomainRecordCreateRequest(type="TXT", name="_acme-challenge", data="token"),
        DomainRecordCreateRequest(type="MX", name="@", data="mail.example.com.", priority=10),
        DomainRecordCreateRequest(
            type="SRV", name="_sip._tcp", data="sip.example.com.", priority=10, port=5060, weight=5
        ),
        DomainRecordCreateRequest(type="CAA", name="@", data="letsencrypt.org.", flags=0, tag="issue"),
    ],
    ids=lambda r: r.type,
)
def test_create_domain_record_bodies_match_the_spec(
    client: DigitalOceanClient, fake: FakeDigitalOcean, req: DomainRecordCreateRequest
) -> None:
    fake.on("POST", RECORDS, ok(201, {"domain_record": domain_record_json(7, req.type, req.name, req.data)}))
    assert client.create_domain_record("example.com", req).type == req.type
    sent = body_of(fake.requests[0])
    assert sent["type"] == req.type and sent["data"] == req.data and None not in sent.values()


def test_domain_record_requests_are_checked_before_sending(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    with pytest.raises(ValueError, match="priority"):
        DomainRecordCreateRequest(type="MX", name="@", data="mail.example.com.")
    with pytest.raises(ValueError, match="flags, tag"):
        DomainRecordCreateRequest(type="CAA", name="@", data="letsencrypt.org.")
    with pytest.raises(ValueError):
        DomainRecordCreateRequest(type="A", name="www", data="192.0.2.1", ttl=5)
    with pytest.raises(ValueError):
        DomainRecordCreateRequest.model_validate({"type": "A", "name": "www", "data": "192.0.2.1", "prio": 1})
    for domain in ("", "a/b", "ex ample.com"):
        with pytest.raises(InputError):
            client.list_domain_records(domain)
    with pytest.raises(InputError, match="record type"):
        client.list_domain_records("example.com", type="BOGUS")
    with pytest.raises(InputError):
        client.get_domain_record("example.com", 0)
    assert fake.requests == []


def test_a_domain_record_is_read_by_its_id(
    client: DigitalOceanClient, fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    fake.on(
        "GET",
        f"{RECORDS}/3352896",
        ok(
            200,
            _example(
                spec_json,
                f"{SPEC_RECORDS}/{{domain_record_id}}",
                "get",
                "200",
            ),
        ),
    )
    record = client.get_domain_record("example.com", 3352896)
    assert (record.id, record.name, record.data) == (3352896, "blog", "162.10.66.0")


def test_delete_domain_record_and_404_is_not_found(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("DELETE", f"{RECORDS}/3352896", no_content())
    client.delete_domain_record("example.com", 3352896)
    fake.on(
        "DELETE",
        f"{RECORDS}/3352896",
        error(404, "not_found", "The resource you were accessing could not be found."),
    )
    with pytest.raises(ProviderNotFoundError) as caught:
        client.delete_domain_record("example.com", 3352896)
    assert caught.value.status_code == 404
    fake.on(
        "GET",
        f"{RECORDS}/3352896",
        error(404, "not_found", "The resource you were accessing could not be found."),
    )
    with pytest.raises(ProviderNotFoundError):
        client.get_domain_record("example.com", 3352896)


def test_domain_record_errors_use_the_one_translation(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on(
        "GET",
        "/v2/domains/nope.com/records",
        error(404, "not_found", "The resource you were accessing could not be found."),
    )
    with pytest.raises(ProviderNotFoundError):
        client.list_domain_records("nope.com")
    fake.on("POST", RECORDS, error(422, "unprocessable_entity", "Data needs to end with a dot (.)"))
    req = DomainRecordCreateRequest(type="CNAME", name="www", data="app.example.com")
    with pytest.raises(ProviderRejectedError, match="end with a dot") as caught:
        client.create_domain_record("example.com", req)
    assert not isinstance(caught.value, PendingEventError)
    fake.on("POST", RECORDS, error(500, "server_error", "Server was unable to give you a response."))
    with pytest.raises(AmbiguousWriteError):
        client.create_domain_record("example.com", req)
    assert len(fake.sent("POST")) == 2  # the 500 was not re-sent


# --- 4xx ----------------------------------------------------------------------------------------


def test_a_404_is_a_not_found_error_after_one_request(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on(
        "GET",
        f"/v2/droplets/{DROPLET_ID}",
        error(404, "not_found", "The resource you were accessing could not be found."),
    )
    with pytest.raises(ProviderNotFoundError, match="not_found"):
        client.get_droplet(DROPLET_ID)
    assert len(fake.requests) == 1


def test_a_pending_event_422_is_a_pending_event_error_after_one_request(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on(
        "POST",
        f"/v2/droplets/{DROPLET_ID}/actions",
        error(422, "unprocessable_entity", "Droplet already has a pending event."),
    )
    with pytest.raises(PendingEventError, match="try again") as caught:
        client.create_droplet_snapshot(DROPLET_ID, "nightly")
    assert caught.value.status_code == 422
    assert len(fake.requests) == 1


def test_other_422_is_rejected_not_pending(client: DigitalOceanClient, fake: FakeDigitalOcean) -> None:
    fake.on(
        "POST", "/v2/droplets", error(422, "unprocessable_entity", "Size is not available in this region.")
    )
    req = DropletCreateRequest(name="web-1", region="nyc3", size="s-64vcpu", image="ubuntu-20-04-x64")
    with pytest.raises(ProviderRejectedError) as caught:
        client.create_droplet(req)
    assert not isinstance(caught.value, PendingEventError)
    assert "Size is not available" in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(401, json={"id": "unauthorized", "message": "Unable to authenticate you."}),
        httpx.Response(403, content=b""),
        httpx.Response(
            400, text="<html><body>Bad Request</body></html>", headers={"content-type": "text/html"}
        ),
    ],
    ids=["401-json", "403-empty", "400-html"],
)
def test_other_4xx_are_clean_rejections(
    client: DigitalOceanClient, fake: FakeDigitalOcean, response: httpx.Response
) -> None:
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", response)
    with pytest.raises(ProviderRejectedError, match=f"HTTP {response.status_code}") as caught:
        client.get_droplet(DROPLET_ID)
    assert caught.value.status_code == response.status_code
    assert "<html" not in str(caught.value)


# --- 429 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["retry-after", "Retry-After", "RETRY-AFTER"])
def test_429_waits_for_retry_after_then_succeeds(
    client: DigitalOceanClient, fake: FakeDigitalOcean, sleeps: list[float], header: str
) -> None:
    fake.on(
        "GET",
        "/v2/actions/36804636",
        error(
            429, "too_many_requests", "API Rate limit exceeded.", {header: "3", "ratelimit-remaining": "0"}
        ),
        ok(200, {"action": action_json(status="completed")}),
    )
    assert client.get_action(36804636).status == "completed"
    assert sleeps == [3.0]
    assert len(fake.requests) == 2


@pytest.mark.parametrize("header", ["ratelimit-reset", "RateLimit-Reset"])
def test_429_without_retry_after_waits_for_ratelimit_reset(
    client: DigitalOceanClient, fake: FakeDigitalOcean, sleeps: list[float], header: str
) -> None:
    limited = httpx.Response(
        429,
        json={"id": "too_many_requests", "message": "API Rate limit exceeded."},
        headers={header: str(int(time.time()) + 20), "ratelimit-remaining": "0"},
    )
    fake.on("GET", "/v2/actions/36804636", limited, ok(200, {"action": action_json()}))
    client.get_action(36804636)
    (waited,) = sleeps
    assert 18.0 <= waited <= 20.0


def test_429_on_a_post_is_resent_because_it_was_not_applied(
    client: DigitalOceanClient, fake: FakeDigitalOcean, sleeps: list[float]
) -> None:
    fake.on(
        "POST",
        f"/v2/droplets/{DROPLET_ID}/actions",
        error(429, "too_many_requests", "API Rate limit exceeded.", {"retry-after": "2"}),
        ok(201, {"action": action_json()}),
    )
    client.create_droplet_snapshot(DROPLET_ID, "nightly")
    assert sleeps == [2.0]
    assert len(fake.sent("POST")) == 2


def test_429_beyond_the_wait_budget_is_rate_limited(fake: FakeDigitalOcean, sleeps: list[float]) -> None:
    fake.on(
        "GET",
        "/v2/actions/36804636",
        error(429, "too_many_requests", "API Rate limit exceeded.", {"retry-after": "30"}),
    )
    with (
        make_client(fake, sleeps, max_rate_limit_wait=100.0) as client,
        pytest.raises(RateLimitedError) as caught,
    ):
        client.get_action(36804636)
    assert sleeps == [30.0, 30.0, 30.0]
    assert len(fake.requests) == 4
    assert caught.value.retry_after == 30.0
    assert caught.value.status_code == 429


# --- 5xx and transport errors ------------------------------------------------------------------


def test_get_503_is_retried_then_succeeds(
    client: DigitalOceanClient, fake: FakeDigitalOcean, sleeps: list[float], spec_json: dict[str, Any]
) -> None:
    unavailable = error(503, "service_unavailable", "Service is temporarily unavailable.")
    fake.on(
        "GET",
        f"/v2/droplets/{DROPLET_ID}",
        unavailable,
        unavailable,
        ok(200, {"droplet": droplet_json(spec_json)}),
    )

    assert client.get_droplet(DROPLET_ID).id == DROPLET_ID
    assert len(fake.requests) == 3
    # Exponential with equal jitter: the n-th wait lies in [b*2^(n-1)/2, b*2^(n-1)].
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0


def test_get_503_forever_gives_up_after_the_configured_attempts(
    client: DigitalOceanClient, fake: FakeDigitalOcean, sleeps: list[float]
) -> None:
    fake.on(
        "GET",
        f"/v2/droplets/{DROPLET_ID}",
        error(503, "service_unavailable", "Service is temporarily unavailable."),
    )
    with pytest.raises(ProviderUnavailableError, match="try again later") as caught:
        client.get_droplet(DROPLET_ID)
    assert len(fake.requests) == 4
    assert len(sleeps) == 3
    assert all(s <= 8.0 for s in sleeps)
    assert caught.value.status_code == 503


def test_backoff_is_capped_and_bounded_by_the_total_deadline(
    fake: FakeDigitalOcean, sleeps: list[float]
) -> None:
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", error(500, "server_error", "Unexpected server-side error"))
    client = make_client(fake, sleeps, attempts=50, base_delay=1.0, max_delay=2.0, deadline=10.0)
    with pytest.raises(ProviderUnavailableError):
        client.get_droplet(DROPLET_ID)
    assert max(sleeps) <= 2.0
    assert sum(sleeps) <= 10.0
    assert len(fake.requests) < 50


def test_delete_5xx_is_retried_and_a_404_afterwards_means_it_is_gone(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on(
        "DELETE",
        "/v2/snapshots/6372321",
        html(502),
        error(404, "not_found", "The resource you were accessing could not be found."),
    )
    with pytest.raises(ProviderNotFoundError):
        client.delete_snapshot("6372321")
    assert len(fake.requests) == 2


def test_post_500_is_ambiguous_and_sent_exactly_once(
    client: DigitalOceanClient, fake: FakeDigitalOcean, sleeps: list[float]
) -> None:
    fake.on(
        "POST",
        f"/v2/droplets/{DROPLET_ID}/actions",
        error(500, "server_error", "Unexpected server-side error"),
    )
    with pytest.raises(AmbiguousWriteError, match="idempotency key") as caught:
        client.create_droplet_snapshot(DROPLET_ID, "nightly")
    assert len(fake.sent("POST")) == 1
    assert sleeps == []
    assert caught.value.status_code == 500


@pytest.mark.parametrize(
    "failure",
    [httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.ReadError, httpx.WriteError, httpx.WriteTimeout],
)
def test_post_failing_after_send_is_ambiguous_and_sent_exactly_once(
    client: DigitalOceanClient,
    fake: FakeDigitalOcean,
    sleeps: list[float],
    failure: type[httpx.TransportError],
) -> None:
    fake.on("POST", "/v2/droplets", failure("the connection went away"))
    req = DropletCreateRequest(name="web-1", region="nyc3", size="s-1vcpu-1gb", image="ubuntu-20-04-x64")
    with pytest.raises(AmbiguousWriteError) as caught:
        client.create_droplet(req)
    assert isinstance(caught.value.__cause__, failure)
    assert len(fake.sent("POST")) == 1
    assert sleeps == []


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_post_that_never_connected_is_retried(
    client: DigitalOceanClient,
    fake: FakeDigitalOcean,
    sleeps: list[float],
    failure: type[httpx.TransportError],
) -> None:
    fake.on(
        "POST",
        f"/v2/droplets/{DROPLET_ID}/actions",
        failure("could not connect"),
        ok(201, {"action": action_json()}),
    )
    assert client.create_droplet_snapshot(DROPLET_ID, "nightly").status == "in-progress"
    assert len(fake.sent("POST")) == 2
    assert len(sleeps) == 1


def test_get_read_timeout_forever_is_unavailable_from_the_cause(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.on("GET", "/v2/actions/36804636", httpx.ReadTimeout("timed out"))
    with pytest.raises(ProviderUnavailableError, match="ReadTimeout") as caught:
        client.get_action(36804636)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len(fake.requests) == 4


def test_html_502_is_a_clean_unavailable_error(client: DigitalOceanClient, fake: FakeDigitalOcean) -> None:
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", html(502))
    with pytest.raises(ProviderUnavailableError, match="HTTP 502") as caught:
        client.get_droplet(DROPLET_ID)
    assert "<html" not in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(
            200, content=b'{"droplet": {"id": 3164444, "name": ', headers={"content-type": "application/json"}
        ),
        httpx.Response(200, json={"droplet": {"id": 3164444, "name": "example.com"}}),
        httpx.Response(200, text="<html><body>Welcome to the captive portal</body></html>"),
        httpx.Response(200, json={"droplet": {"id": "not-a-number"}}),
        httpx.Response(200, content=b""),
    ],
    ids=["truncated-json", "missing-fields", "html", "wrong-type", "empty"],
)
def test_a_2xx_we_cannot_parse_is_a_response_error(
    client: DigitalOceanClient, fake: FakeDigitalOcean, response: httpx.Response
) -> None:
    fake.check_responses = False
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", response)
    # A web page is not DigitalOcean's answer at all (ProviderNotReachedError, a ProviderResponseError).
    with pytest.raises(ProviderResponseError, match=r"DropletEnvelope|not DigitalOcean's JSON"):
        client.get_droplet(DROPLET_ID)
    assert len(fake.requests) == 1


def test_an_unreadable_json_2xx_to_a_post_says_the_write_happened(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    fake.check_responses = False
    fake.on(
        "POST",
        f"/v2/droplets/{DROPLET_ID}/actions",
        httpx.Response(201, content=b'{"action": {"id": ', headers={"content-type": "application/json"}),
    )
    with pytest.raises(ProviderResponseError, match="look the resource up by its idempotency key") as caught:
        client.create_droplet_snapshot(DROPLET_ID, "nightly")
    assert not isinstance(caught.value, ProviderNotReachedError)
    assert len(fake.sent("POST")) == 1


def test_a_web_page_answering_a_post_with_a_2xx_is_not_the_provider_and_applied_nothing(
    client: DigitalOceanClient, fake: FakeDigitalOcean
) -> None:
    """DigitalOcean answers JSON, always: a page is a captive portal or a wrong SAGAS_DO_API_URL."""
    fake.check_responses = False
    fake.on("POST", f"/v2/droplets/{DROPLET_ID}/actions", httpx.Response(201, text="<html>Created</html>"))
    with pytest.raises(ProviderNotReachedError, match="did not reach the provider"):
        client.create_droplet_snapshot(DROPLET_ID, "nightly")
    assert len(fake.sent("POST")) == 1  # not sent again: it would meet the same page


def test_ids_are_checked_before_anything_is_sent(client: DigitalOceanClient, fake: FakeDigitalOcean) -> None:
    with pytest.raises(ValueError):
        client.get_droplet(0)
    with pytest.raises(ValueError):
        client.delete_snapshot("")
    assert fake.requests == []


# --- secrets ------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


def test_the_token_never_appears_in_errors_or_logs(
    fake: FakeDigitalOcean, sleeps: list[float], caplog: pytest.LogCaptureFixture, spec_json: dict[str, Any]
) -> None:
    secret = TOKEN.get_secret_value()
    caplog.set_level(logging.DEBUG)
    path = f"/v2/droplets/{DROPLET_ID}"
    actions = f"/v2/droplets/{DROPLET_ID}/actions"
    client = make_client(fake, sleeps, max_rate_limit_wait=5.0)
    failures: list[tuple[str, str, Any, Callable[[], object]]] = [
        ("GET", path, error(404, "not_found", "nope"), lambda: client.get_droplet(DROPLET_ID)),
        # A server that echoes what it was sent must not get our token into the message.
        (
            "GET",
            path,
            error(401, "unauthorized", f"bad token Bearer {secret}"),
            lambda: client.get_droplet(DROPLET_ID),
        ),
        ("GET", path, html(503), lambda: client.get_droplet(DROPLET_ID)),
        ("GET", path, httpx.ConnectError("refused"), lambda: client.get_droplet(DROPLET_ID)),
        (
            "GET",
            path,
            error(429, "too_many_requests", "slow", {"retry-after": "10"}),
            lambda: client.get_droplet(DROPLET_ID),
        ),
        ("GET", path, httpx.Response(200, text="<html/>"), lambda: client.get_droplet(DROPLET_ID)),
        (
            "POST",
            actions,
            httpx.ReadTimeout("timed out"),
            lambda: client.create_droplet_snapshot(DROPLET_ID, "x"),
        ),
        (
            "POST",
            actions,
            error(500, "server_error", "oops"),
            lambda: client.create_droplet_snapshot(DROPLET_ID, "x"),
        ),
        (
            "POST",
            actions,
            error(422, "unprocessable_entity", "Droplet already has a pending event."),
            lambda: client.create_droplet_snapshot(DROPLET_ID, "x"),
        ),
    ]
    fake.check_responses = False
    raised: list[BaseException] = []
    for method, route, answer, call in failures:
        fake.on(method, route, answer)
        with pytest.raises(ProviderError) as caught:
            call()
        raised.append(caught.value)
    fake.on("GET", path, ok(200, {"droplet": droplet_json(spec_json)}))
    client.get_droplet(DROPLET_ID)

    assert len(fake.requests) > len(failures)  # the token really was sent, over and over
    for exc in raised:
        for link in _chain(exc):
            assert secret not in str(link)
            assert secret not in repr(link)
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(record.args)
    assert any(
        r.name == "sagas.digitalocean" and r.levelno == logging.DEBUG and "200" in r.getMessage()
        for r in caplog.records
    )
    assert secret not in repr(client)


# --- construction -------------------------------------------------------------------------------


class ClosingTransport(httpx.MockTransport):
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        super().__init__(handler)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_from_settings_uses_the_purposes_token_and_closes_what_it_opened(
    fake: FakeDigitalOcean, spec_json: dict[str, Any]
) -> None:
    read_token = SecretStr("dop_v1_" + "7ead" * 16)
    settings = Settings(
        do_api_url=BASE_URL, do_token_read=read_token, do_token_provisioning=TOKEN, do_timeout_seconds=7.5
    )
    fake.on("GET", f"/v2/droplets/{DROPLET_ID}", ok(200, {"droplet": droplet_json(spec_json)}))
    transport = ClosingTransport(fake)

    with DigitalOceanClient.from_settings(settings, TokenPurpose.READ, transport=transport) as client:
        client.get_droplet(DROPLET_ID)

    (request,) = fake.requests
    assert request.headers["authorization"] == f"Bearer {read_token.get_secret_value()}"
    assert request.headers["user-agent"] == "arcadia-sagas/0.1"
    assert request.extensions["timeout"]["read"] == 7.5
    assert transport.closed


def test_an_injected_http_client_is_left_open(fake: FakeDigitalOcean) -> None:
    transport = ClosingTransport(fake)
    http = httpx.Client(base_url=BASE_URL, transport=transport)
    with DigitalOceanClient(http, TOKEN):
        pass
    assert not transport.closed
    http.close()


def test_the_shared_budget_holds_requests_back_when_the_provider_says_none_remain(
    fake: FakeDigitalOcean, sleeps: list[float]
) -> None:
    budget_sleeps: list[float] = []
    now = [5000.0]

    def budget_sleep(seconds: float) -> None:
        budget_sleeps.append(seconds)
        now[0] += seconds

    budget = RateBudget(clock=lambda: now[0], wall_clock=lambda: 1_700_000_000.0 + now[0], sleep=budget_sleep)
    reset_at = str(int(1_700_000_000.0 + now[0]) + 45)
    fake.check_responses = False
    fake.on(
        "GET",
        "/v2/actions/36804636",
        ok(200, {"action": action_json()}, {"ratelimit-remaining": "0", "ratelimit-reset": reset_at}),
    )
    client = make_client(fake, sleeps, budget=budget)
    client.get_action(36804636)
    assert budget_sleeps == []
    client.get_action(36804636)
    assert sum(budget_sleeps) == pytest.approx(45.0)
    assert sleeps == []  # no 429 was ever needed
