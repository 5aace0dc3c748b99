"""The cancel matrix: a cancel requested while each step of each scenario waits on the provider.

A **cancel case** is (scenario, step). The step is held inside its provider wait: its droplet action
is made slow (``action_seconds_by_type``), a deleted droplet lingers (``delete_droplet`` polls until
404), or, for the DNS steps that have no wait of their own, their write is held in flight by a
``latency`` fault. The core runner runs the saga in a thread; once the step's ledger row is
``running`` and shows it is inside that wait (its action id is recorded, its delete was applied, its
write is in flight), the cancel is requested through the ledger (``Ledger.request_cancel``, what
``sagas cancel`` does), the timings go back to normal, and the saga is run to an end.

Expected (``scenarios``): before the scenario's first pivot ``rolled_back`` with the provider exactly as
before the saga; at or after it ``completed`` (or ``failed`` for an operator), with whatever the steps
before the pivot made still there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sagas.ledger.store import Ledger
from sagas.models import StepStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import MECHANICS
from tests.reliability.harness.scenarios import (
    BEFORE_PIVOT,
    PAST_PIVOT,
    Scenario,
    judge_outcome,
    run_to_an_end,
    scenarios,
)
from tests.reliability.harness.world import STEP_WRITES, CaseResult, Sim, Verdict, Write, steps_of

HOLD_WALL_SECONDS = 2.5  # how long a held wait lasts: time to see the step inside it and cancel
TIME_SCALE = 0.02  # the simulator's clock in these cases (the suite's usual one)
REACH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Hold:
    """How a step is kept inside a provider wait, and how the harness sees that it is in there."""

    action: str | None = None  # a droplet action type made slow; the step polls it
    progress: str | None = None  # the output field the step checkpoints once it is waiting
    linger: bool = False  # a deleted droplet lingers: ``delete_droplet`` polls it until 404
    in_flight: Write | None = None  # no wait of its own: this write is held by a ``latency`` fault


HOLDS: dict[str, Hold] = {
    "create_droplet": Hold(action="create", progress="droplet_id"),
    "create_droplet_snapshot": Hold(action="snapshot", progress="action_id"),
    "power_off_droplet": Hold(action="shutdown", progress="shutdown_id"),
    "power_on_droplet": Hold(action="power_on", progress="power_on_id"),
    "resize_droplet": Hold(action="resize", progress="resize_id"),
    "restore_droplet": Hold(action="restore", progress="restore_id"),
    "delete_droplet": Hold(linger=True, progress="deleting"),
    "create_dns_record": Hold(in_flight=STEP_WRITES["create_dns_record"].execute),
    "delete_dns_record": Hold(in_flight=STEP_WRITES["delete_dns_record"].execute),
}


@dataclass(frozen=True)
class CancelCase:
    scenario: Scenario
    step: int

    @property
    def step_name(self) -> str:
        return self.scenario.steps[self.step]

    def __str__(self) -> str:
        return f"{self.scenario}[{self.step}:{self.step_name}]@cancel"


def cancel_cases(names: list[str] | None = None) -> list[CancelCase]:
    """Every (scenario, step), optionally only the scenarios named."""
    chosen = [s for s in scenarios() if names is None or s.name in names]
    return [CancelCase(s, i) for s in chosen for i in range(len(s.steps))]


def run_cancel_case(case: CancelCase, sim: Sim, ledger: Ledger, settings: Settings) -> CaseResult:
    started = time.monotonic()
    try:
        verdict = _cancel_case(case, sim, ledger, settings)
    except Exception as exc:  # the harness itself failed for this case: it did not hold
        verdict = Verdict(False, detail=f"harness: {type(exc).__name__}: {exc}")
    finally:
        sim.clear_faults()
    return CaseResult(str(case), verdict, time.monotonic() - started)


def _arm(hold: Hold, case: CancelCase, sim: Sim) -> None:
    slow = HOLD_WALL_SECONDS / TIME_SCALE  # in simulated seconds
    if hold.action is not None:
        sim.configure(action_seconds_by_type={hold.action: slow})
    if hold.linger:
        sim.configure(droplet_delete_linger_seconds=slow)
    if hold.in_flight is not None:
        write = hold.in_flight
        earlier = sum(
            1
            for s in case.scenario.steps[: case.step]
            if (w := STEP_WRITES[s].execute).method == write.method and w.path == write.path
        )
        sim.add_faults(
            {
                "kind": "latency",
                "method": write.method,
                "path": write.path,
                "after": earlier,
                "seconds": HOLD_WALL_SECONDS,
            }
        )


def _disarm(sim: Sim) -> None:
    """New actions and deletes at their usual pace again (one already started keeps its own)."""
    from sagas.digitalocean.simulator import SimulatorConfig

    defaults = SimulatorConfig()
    sim.configure(
        action_seconds_by_type=defaults.action_seconds_by_type,
        droplet_delete_linger_seconds=defaults.droplet_delete_linger_seconds,
    )


def _cancel_case(case: CancelCase, sim: Sim, ledger: Ledger, settings: Settings) -> Verdict:
    sim.reset(TIME_SCALE)
    inputs = case.scenario.prepare(sim)
    before = sim.world()
    saga, _ = ledger.create_saga(catalog().new_saga(case.scenario.kind, inputs, options=MECHANICS))
    hold = HOLDS[case.step_name]
    _arm(hold, case, sim)

    crashed: list[BaseException] = []

    def run() -> None:
        services = Services(settings)
        try:
            Runner(ledger, catalog(), services).advance(saga.id)
        except BaseException as exc:  # judged below: the saga is run to an end all the same
            crashed.append(exc)
        finally:
            services.close()

    runner = threading.Thread(target=run, name=f"cancel-{case}", daemon=True)
    runner.start()

    def inside() -> bool:
        row = steps_of(ledger, saga.id).get(case.step)
        if row is None or row.status is not StepStatus.RUNNING:
            return False
        if hold.in_flight is not None:
            return sim.fired() >= 1
        if hold.progress is None or not row.output.get(hold.progress):
            return False
        return not hold.linger or any(k.startswith("delete_droplet:") for k in sim.writes())

    deadline = time.monotonic() + REACH_TIMEOUT
    while not inside():
        if not runner.is_alive():
            status = ledger.get_saga(saga.id).status.value
            _disarm(sim)
            return Verdict(
                False, detail=f"harness: the saga ended {status} before {case.step_name} reached its wait"
            )
        if time.monotonic() > deadline:
            _disarm(sim)
            runner.join(120)
            return Verdict(False, detail=f"harness: {case.step_name} never reached its wait")
        time.sleep(0.02)
    ledger.request_cancel(saga.id)
    _disarm(sim)
    runner.join(120)
    if runner.is_alive():
        return Verdict(False, detail="the runner did not stop within 120s of the cancel")
    sim.clear_faults()
    final = run_to_an_end(ledger, settings, saga.id)
    allowed = PAST_PIVOT if case.scenario.past_pivot(case.step) else BEFORE_PIVOT
    verdict = judge_outcome(
        sim, ledger, saga.id, before, inputs, allowed, past_pivot=case.scenario.past_pivot(case.step)
    )
    if crashed and not verdict.survived:
        verdict.detail += f"; the runner raised {type(crashed[0]).__name__}: {crashed[0]}"
    if not final.status.is_terminal and not final.status.needs_operator:
        verdict.detail += f"; still {final.status.value} after 90s"
        verdict.survived = False
    return verdict
