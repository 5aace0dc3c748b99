"""When the parts around a saga fail, the saga neither lies nor lingers.

- a compensation facing a provider that answers 5xx forever ends ``compensation_failed`` within its
  deadline, having sent no more requests than the one retry layer allows;
- a provider that is down (or answers HTML) before the first write: the saga ends ``rolled_back``
  without calling the provider for the undo, and its droplet is free again;
- a ledger blip of half a second while a step polls: the saga completes, nothing is undone;
- a heartbeat that cannot renew for longer than the lease stops the runner's provider calls at once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from sagas.errors import LeaseLostError
from sagas.heartbeat import Heartbeat
from sagas.ledger.store import Ledger
from sagas.models import Lease, SagaStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import advance_saga, fail_snapshot_deletes, live_snapshots, seed_droplet, wait_for
from tests.reliability.harness.db_faults import block_ledger_connections


def _run(
    ledger: Ledger, settings: Settings, kind: str, inputs: dict[str, Any], steps: list[str] | None = None
) -> Any:
    saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, steps=steps))
    return advance_saga(ledger, settings, saga.id)


def _fault_counts(sim: httpx.Client) -> list[dict[str, Any]]:
    return list(sim.get("/_sim/faults").json()["rules"])


def test_a_compensation_facing_5xx_forever_gives_up_within_its_deadline_and_request_budget(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    droplet = seed_droplet(sim)
    fail_snapshot_deletes(sim)
    bounded = settings.model_copy(update={"compensation_deadline_seconds": 20.0, "compensation_attempts": 5})
    started = time.monotonic()
    saga = _run(ledger, bounded, "test", {"droplet_id": droplet}, ["create_droplet_snapshot", "fail"])
    took = time.monotonic() - started
    assert saga.status is SagaStatus.COMPENSATION_FAILED, saga.error
    assert "500" in (saga.error or "")
    [rule] = _fault_counts(sim)
    # One retry layer: the client's policy (do_retry_attempts) and nothing stacked on top of it.
    assert 1 <= rule["matched"] <= settings.do_retry_attempts, rule
    assert took < 20.0
    assert len(live_snapshots(sim)) == 1  # not dropped: the operator still sees it


class _HtmlEverywhere(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b"<html><body>Service temporarily unavailable</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlEverywhere)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("provider", ["nothing listening", "a server answering HTML with 200"])
def test_a_provider_down_before_the_first_write_rolls_back_and_frees_the_droplet(
    provider: str, ledger: Ledger, settings: Settings, html_server: str
) -> None:
    url = _closed_port() if provider == "nothing listening" else html_server
    down = settings.model_copy(update={"do_api_url": url, "do_retry_deadline_seconds": 1.0})
    saga = _run(ledger, down, "suspend", {"droplet_id": 4242})
    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert ledger.resource_holder("droplet:4242") is None  # the next saga on it is not "busy"
    [step] = ledger.list_step_results(saga.id)
    assert step.write_started_at is None and step.compensation_attempts == 0  # the undo asked nobody


def test_a_half_second_ledger_blip_mid_poll_neither_fails_nor_rolls_back_the_saga(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 150}).raise_for_status()  # 3 s of wall time
    droplet = seed_droplet(sim)
    saga, _ = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": droplet}))
    outcome: dict[str, Any] = {}

    def run() -> None:
        services = Services(settings)
        try:
            outcome["saga"] = Runner(ledger, catalog(), services).advance(saga.id)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            services.close()

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(
        lambda: any("action_id" in s.output for s in ledger.list_step_results(saga.id)),
        what="the snapshot action to be recorded",
    )
    block_ledger_connections(ledger, 0.5)
    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["saga"].status is SagaStatus.COMPLETED, outcome["saga"].error
    [step] = ledger.list_step_results(saga.id)
    assert step.compensation_attempts == 0
    assert len(live_snapshots(sim)) == 1


def test_a_heartbeat_that_cannot_renew_for_longer_than_the_lease_stops_provider_calls(
    sim: httpx.Client, settings: Settings
) -> None:
    gone = Ledger(create_engine(f"postgresql+psycopg://postgres@{_closed_port()[len('http://') :]}/nowhere"))
    lease = Lease(saga_id=uuid.uuid4(), owner=uuid.uuid4(), epoch=1, seconds=0.3)
    services = Services(settings)
    before = sim.get("/_sim/state").json()["counters"]
    try:
        with Heartbeat(gone, lease) as heartbeat:
            services.halt_on(heartbeat.lost)
            assert heartbeat.lost.wait(5), "the heartbeat never gave up"
            with pytest.raises(LeaseLostError, match="stopped calling the provider"):
                services.digitalocean().get_droplet(1)
    finally:
        services.close()
    assert sim.get("/_sim/state").json()["counters"] == before  # not one request reached it
