"""A step that meets DigitalOcean's "already there" refusal counts its goal as reached.

DigitalOcean answers 422 to a ``power_off`` of a droplet that is off and to a ``resize`` to the
droplet's own size (docs/simulator.md). A step can meet that answer when the droplet got there
between the step's look and its POST. Each race is arranged through the simulator's control API,
never by patching code: a latency fault holds the step's POST back while the droplet gets there,
or an action that is already running gets it there first. Without the handling in
``tasks/power.py`` each of these sagas ends differently (rolled back, or its undo failed).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.settings import load_settings
from tests.conftest import run_saga, seed_droplet, wait_for

SCALE = 0.02  # the session simulator's time_scale: a simulated second is 20 ms


def _status(api: httpx.Client, droplet_id: int) -> str:
    return str(api.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["status"])


def _power_off(api: httpx.Client, droplet_id: int) -> None:
    api.post(f"/v2/droplets/{droplet_id}/actions", json={"type": "power_off"}).raise_for_status()
    wait_for(lambda: _status(api, droplet_id) == "off", what=f"droplet {droplet_id} off")


def _hold_next_action_post(sim: httpx.Client, droplet_id: int, *, after: int, seconds: float) -> None:
    """Delay one POST of a droplet action by ``seconds`` before the simulator looks at it."""
    rule = {
        "kind": "latency",
        "method": "POST",
        "path": rf"^/v2/droplets/{droplet_id}/actions$",
        "after": after,
        "times": 1,
        "seconds": seconds,
    }
    sim.post("/_sim/faults", json=rule).raise_for_status()


def _counters(sim: httpx.Client) -> dict[str, Any]:
    return dict(sim.get("/_sim/state").json()["counters"])


def test_power_off_counts_a_shutdown_that_took_effect_after_its_timeout_as_done(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guest shuts down 2 s after the shutdown action completes; the step waits 0.3 s for it,
    # then pulls the plug, and its power_off POST reaches the provider 2.5 s later: after the
    # droplet went off. DigitalOcean refuses that power_off ("already powered off").
    monkeypatch.setenv("SAGAS_SHUTDOWN_TIMEOUT_SECONDS", "0.3")
    sim.post("/_sim/config", json={"status_lag_seconds": 2.0 / SCALE}).raise_for_status()
    droplet_id = seed_droplet(sim)
    _hold_next_action_post(sim, droplet_id, after=1, seconds=2.5)  # after the shutdown POST

    saga = run_saga(ledger, load_settings(), "test", {"droplet_id": droplet_id}, ["power_off_droplet"])

    assert saga.status is SagaStatus.COMPLETED, saga.error
    assert _status(api, droplet_id) == "off"
    output = ledger.list_step_results(saga.id)[0].output
    assert output["power_off_already_done"] is True and output["forced"] is False
    counters = _counters(sim)
    assert counters["faults_fired"] == 1 and counters["statuses"].get("422", 0) >= 1
    assert counters["writes"][f"action:shutdown:{droplet_id}"] == 1
    assert f"action:power_off:{droplet_id}" not in counters["writes"]  # refused, so never applied


def test_undoing_a_power_on_counts_a_droplet_found_off_as_undone(
    simulator: Any,
    sim: httpx.Client,
    api: httpx.Client,
    ledger: Ledger,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # power_on_droplet runs, the next step fails, and the undo powers the droplet off again. While
    # the undo's power_off POST is held back, the droplet is powered off by someone else (a guest
    # shutting itself down): DigitalOcean refuses the undo's POST. A single compensation attempt,
    # so that a refusal the undo did not understand would leave the saga compensation_failed.
    monkeypatch.setenv("SAGAS_COMPENSATION_ATTEMPTS", "1")
    droplet_id = seed_droplet(sim)
    _power_off(api, droplet_id)
    _hold_next_action_post(sim, droplet_id, after=1, seconds=2.0)  # after the step's power_on POST
    errors: list[BaseException] = []

    def someone_else_powers_it_off() -> None:
        headers = {"Authorization": f"Bearer {env['SAGAS_DO_TOKEN']}"}
        try:
            with (
                httpx.Client(base_url=simulator.base_url, timeout=10) as control,
                httpx.Client(base_url=simulator.base_url, headers=headers, timeout=10) as other,
            ):
                wait_for(
                    lambda: control.get("/_sim/faults").json()["rules"][0]["fired"] == 1,
                    what="the undo's power_off POST to be held back",
                )
                _power_off(other, droplet_id)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    other = threading.Thread(target=someone_else_powers_it_off)
    other.start()
    try:
        saga = run_saga(
            ledger, load_settings(), "test", {"droplet_id": droplet_id}, ["power_on_droplet", "fail"]
        )
    finally:
        other.join(timeout=30)
    assert not errors, errors

    assert saga.status is SagaStatus.ROLLED_BACK, saga.error
    assert _status(api, droplet_id) == "off"
    counters = _counters(sim)
    assert counters["faults_fired"] == 1 and counters["statuses"].get("422", 0) >= 1
    # Ours: the arranging power_off and the other party's; the undo's own was refused.
    assert counters["writes"][f"action:power_off:{droplet_id}"] == 2
    assert counters["writes"][f"action:power_on:{droplet_id}"] == 1


def test_resize_counts_a_droplet_already_at_the_new_size_as_done(
    sim: httpx.Client, api: httpx.Client, ledger: Ledger, env: dict[str, str]
) -> None:
    # Someone else's resize to the same size is running when the step looks (the droplet still
    # reads its old size); the step's POST waits out the pending event, then is refused: "The
    # droplet is already set to this size."
    sim.post("/_sim/config", json={"action_seconds_by_type": {"resize": 3.0 / SCALE}}).raise_for_status()
    droplet_id = seed_droplet(sim)
    _power_off(api, droplet_id)
    api.post(
        f"/v2/droplets/{droplet_id}/actions", json={"type": "resize", "size": "s-2vcpu-2gb"}
    ).raise_for_status()

    inputs = {"droplet_id": droplet_id, "size": "s-2vcpu-2gb"}
    saga = run_saga(ledger, load_settings(), "test", inputs, ["resize_droplet"])

    assert saga.status is SagaStatus.COMPLETED, saga.error
    output = ledger.list_step_results(saga.id)[0].output
    assert output["resize_already_done"] is True and output["original_size"] == "s-1vcpu-1gb"
    assert api.get(f"/v2/droplets/{droplet_id}").json()["droplet"]["size_slug"] == "s-2vcpu-2gb"
    assert _counters(sim)["writes"][f"action:resize:{droplet_id}"] == 1  # only the other party's
