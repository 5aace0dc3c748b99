"""End to end: the project's DigitalOcean client against the simulator, over real loopback HTTP.

The two share no code; each is checked against the official spec on its own (tests/test_do_client.py,
tests/test_simulator_openapi.py). This checks they also agree with each other on a whole droplet life
cycle and on DNS records, with the simulator's timing (actions that take time, the status lag after a
power action, a deleted droplet that lingers) at ``time_scale=0.02``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import httpx
import pytest
from pydantic import SecretStr

from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient
from sagas.digitalocean.models import (
    DomainRecordCreateRequest,
    DropletCreateRequest,
    PowerOffActionRequest,
    PowerOnActionRequest,
    ResizeActionRequest,
    ShutdownActionRequest,
)
from sagas.digitalocean.simulator import RunningSimulator, SimulatorConfig, run_simulator_in_thread
from sagas.errors import PendingEventError, ProviderNotFoundError, ProviderRejectedError

SCALE = 0.02  # a 2 s action takes 40 ms
STATUS_LAG = 20.0  # simulated seconds: 0.4 s, long enough to see the action done and the status not yet
SHUTDOWN_SECONDS = 15.0  # 0.3 s: long enough to see the droplet locked and a second action refused
T = TypeVar("T")


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    config = SimulatorConfig(
        time_scale=SCALE,
        status_lag_seconds=STATUS_LAG,
        action_seconds_by_type={"shutdown": SHUTDOWN_SECONDS},
        droplet_delete_linger_seconds=5,
    )
    with run_simulator_in_thread(config) as running:
        yield running


@pytest.fixture
def do(sim: RunningSimulator) -> Iterator[DigitalOceanClient]:
    sim.app.reset()
    http = httpx.Client(base_url=sim.base_url, timeout=5)
    client = DigitalOceanClient(
        http, SecretStr("dop_v1_e2e-test"), retry=DEFAULT_RETRY.replace(sleep=time.sleep)
    )
    yield client
    http.close()


def wait_for(check: Callable[[], T | None], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_the_client_and_simulator_agree_on_a_droplet_life_cycle_and_its_dns_record(
    do: DigitalOceanClient, sim: RunningSimulator
) -> None:
    started = time.monotonic()
    tag = "saga:e2e-1"
    created = do.create_droplet(
        DropletCreateRequest(
            name="e2e-1", region="fra1", size="s-1vcpu-1gb", image="ubuntu-24-04-x64", tags=[tag, "arcadia"]
        )
    )
    assert created.status == "new" and created.public_ipv4 is None
    active = wait_for(lambda: (d := do.get_droplet(created.id)).status == "active" and not d.locked and d)
    assert active.public_ipv4 and (active.memory, active.vcpus, active.disk) == (1024, 1, 25)

    (found,) = do.find_droplets_by_tag(tag)
    assert found.id == created.id and found.tags == [tag, "arcadia"]
    assert do.list_droplets(tag_name="no-such-tag") == []

    def completed(action_id: int) -> None:
        wait_for(lambda: do.get_action(action_id).status == "completed")

    # Graceful shutdown: a second action meanwhile is a pending event; the status lags the action.
    shutdown = do.post_droplet_action(created.id, ShutdownActionRequest())
    assert shutdown.resource_id == created.id and do.get_droplet(created.id).locked
    with pytest.raises(PendingEventError):
        do.post_droplet_action(created.id, PowerOffActionRequest())
    completed(shutdown.id)
    assert do.get_droplet(created.id).status == "active"  # the action is done, the status not yet
    with pytest.raises(ProviderRejectedError, match="power it off"):
        do.post_droplet_action(created.id, ResizeActionRequest(size="s-2vcpu-4gb", disk=True))
    wait_for(lambda: do.get_droplet(created.id).status == "off")

    resize = do.post_droplet_action(created.id, ResizeActionRequest(size="s-2vcpu-4gb", disk=True))
    completed(resize.id)
    resized = do.get_droplet(created.id)
    assert (resized.size_slug, resized.memory, resized.vcpus, resized.disk) == ("s-2vcpu-4gb", 4096, 2, 80)
    assert resized.status == "off"

    power_on = do.post_droplet_action(created.id, PowerOnActionRequest())
    completed(power_on.id)
    wait_for(lambda: do.get_droplet(created.id).status == "active")

    # DNS: an A record for the droplet, found by its full name, then deleted (twice: 404 the second time).
    assert httpx.post(f"{sim.base_url}/_sim/domains", json={"name": "example.com"}).status_code == 201
    address = resized.public_ipv4
    assert address is not None
    record = do.create_domain_record(
        "example.com", DomainRecordCreateRequest(type="A", name="e2e-1", data=address, ttl=300)
    )
    assert (record.name, record.data, record.ttl) == ("e2e-1", address, 300)
    listed = do.list_domain_records("example.com", name="e2e-1.example.com", type="A")
    assert [r.id for r in listed] == [record.id]
    assert do.get_domain_record("example.com", record.id) == record
    assert len(do.list_domain_records("example.com")) == 5  # SOA, 3 NS and ours
    do.delete_domain_record("example.com", record.id)
    with pytest.raises(ProviderNotFoundError):
        do.delete_domain_record("example.com", record.id)
    assert do.list_domain_records("example.com", name="e2e-1.example.com") == []
    with pytest.raises(ProviderNotFoundError):
        do.list_domain_records("not-seeded.org")

    # Delete: the droplet lingers a moment, then is gone.
    do.delete_droplet(created.id)
    assert do.get_droplet(created.id).id == created.id
    wait_for(lambda: not do.find_droplets_by_tag(tag))
    with pytest.raises(ProviderNotFoundError):
        do.get_droplet(created.id)

    writes = sim.app.state()["counters"]["writes"]
    assert writes["droplet:e2e-1"] == 1 and writes["dns:A:e2e-1.example.com"] == 1
    assert writes[f"action:shutdown:{created.id}"] == 1 and f"action:power_off:{created.id}" not in writes
    assert sim.app.state()["counters"]["responses_429"] == 0
    assert time.monotonic() - started < 10


def test_the_provider_clock_read_before_a_post_is_not_later_than_the_actions_started_at(
    sim: RunningSimulator,
) -> None:
    """Learned from the Date headers of earlier answers, at no request of its own: a step records it
    before a POST to tell later which actions could be its own (``tasks.actions``)."""
    from sagas.digitalocean.provider_clock import ProviderClock, provider_clock_for

    sim.app.reset()
    droplet_id = int(sim.state.seed_droplet({"name": "clock-1"})["id"])
    token = SecretStr("dop_v1_e2e-test")
    with httpx.Client(base_url=sim.base_url, timeout=5) as http:
        do = DigitalOceanClient(http, token, provider_clock=ProviderClock())
        assert do.provider_time() is None  # no answer yet
        do.get_droplet(droplet_id)
        answered = do.provider_time()
        time.sleep(1.5)
        posted_after = do.provider_time()
        action = do.post_droplet_action(droplet_id, PowerOffActionRequest())
        assert answered is not None and posted_after is not None
        assert posted_after - answered >= timedelta(seconds=1.5)  # it keeps up between answers
        # Never later than the provider's clock when the POST landed (Date and started_at are whole
        # seconds: within one), and close below it (a server under load may refresh Date late).
        assert posted_after <= action.started_at + timedelta(seconds=1)
        assert posted_after >= action.started_at - timedelta(seconds=5)
        # Every client of the API in this process shares one clock: a fresh one knows the time at once.
        DigitalOceanClient(http, token).get_droplet(droplet_id)
        assert DigitalOceanClient(http, token).provider_time() is not None
        assert provider_clock_for(sim.base_url).now_at_least() is not None
