"""The crash matrix: a runner SIGKILLed at every point of every step of every kind, then recovered.

A **crash case** is (kind, step index, point). Points: ``before_write`` (the step's provider write is
held by a ``latency`` fault; the runner is SIGKILLed while it waits, so the write never lands: a
POST whose client vanished is dropped by the server when it reads the body), ``after_write``
(``slow_response``: applied, reply held; killed once ``/_sim/state`` counts the write),
``after_ledger`` (killed once the step's ledger row shows what the write did), ``compensating``
(the saga is the test kind running the kind's steps up to this one then ``fail``; the undo's write
is held with ``latency`` and the runner killed while it waits).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sagas.ledger.store import Ledger
from sagas.models import Reversibility, SagaStatus, StepStatus
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import MECHANICS
from tests.reliability.harness.world import (
    FIXED_KINDS,
    HOLD_SECONDS,
    STEP_WRITES,
    CaseResult,
    Sim,
    Verdict,
    Write,
    advance_until_terminal,
    cli,
    judge,
    steps_of,
)
from tests.test_kinds import prepare

POINTS = ("before_write", "after_write", "after_ledger", "compensating")


@dataclass(frozen=True)
class CrashCase:
    kind: str
    step: int
    point: str

    @property
    def step_name(self) -> str:
        return (catalog().kind(self.kind).steps or ())[self.step]

    def __str__(self) -> str:
        return f"{self.kind}[{self.step}:{self.step_name}]@{self.point}"


def _has_pivot(steps: list[str], inputs: Mapping[str, Any]) -> bool:
    return any(catalog().step(s).reversibility_for(inputs) is Reversibility.PIVOT for s in steps)


def crash_cases(kinds: list[str] | None = None, points: tuple[str, ...] = POINTS) -> list[CrashCase]:
    """Every (kind, step, point); ``compensating`` only where a failure after the step rolls back."""
    cases = []
    for kind in kinds or FIXED_KINDS:
        steps = list(catalog().kind(kind).steps or ())
        for i in range(len(steps)):
            for point in points:
                if point == "compensating" and (
                    _has_pivot(steps[: i + 1], {}) or STEP_WRITES[steps[i]].undo is None
                ):
                    continue
                cases.append(CrashCase(kind, i, point))
    return cases


def _matches(write: Write, steps: list[str], *, undo_of: str | None = None) -> int:
    """How many earlier requests the fault for ``write`` must let pass: the forward writes of
    ``steps`` on the same method and path (each step writes once on a clean run)."""
    n = sum(1 for s in steps if (w := STEP_WRITES[s].execute).method == write.method and w.path == write.path)
    return n


def run_crash_case(
    case: CrashCase, sim: Sim, ledger: Ledger, settings: Settings, env: Mapping[str, str]
) -> CaseResult:
    started = time.monotonic()
    try:
        verdict = _crash_case(case, sim, ledger, settings, env)
    except Exception as exc:  # the harness itself failed for this case: it did not survive
        verdict = Verdict(False, detail=f"harness: {type(exc).__name__}: {exc}")
    finally:
        sim.clear_faults()
    return CaseResult(str(case), verdict, time.monotonic() - started)


def _crash_case(
    case: CrashCase, sim: Sim, ledger: Ledger, settings: Settings, env: Mapping[str, str]
) -> Verdict:
    sim.reset()
    inputs = prepare(case.kind, sim.control, sim.api)
    before = sim.world()
    kind_steps = list(catalog().kind(case.kind).steps or ())
    target = STEP_WRITES[case.step_name]
    if case.point == "compensating":
        steps = [*kind_steps[: case.step + 1], "fail"]
        new = catalog().new_saga("test", inputs, steps=steps)
        expect = SagaStatus.ROLLED_BACK
    else:
        new = catalog().new_saga(case.kind, inputs, options=MECHANICS)
        expect = SagaStatus.COMPLETED
    saga, _ = ledger.create_saga(new)

    baseline = sim.writes()
    hold: Write = target.execute
    if case.point == "before_write":
        after = _matches(hold, kind_steps[: case.step])
        sim.add_faults(
            {
                "kind": "latency",
                "method": hold.method,
                "path": hold.path,
                "after": after,
                "seconds": HOLD_SECONDS,
            }
        )
    elif case.point == "after_write":
        after = _matches(hold, kind_steps[: case.step])
        sim.add_faults(
            {
                "kind": "slow_response",
                "method": hold.method,
                "path": hold.path,
                "after": after,
                "seconds": HOLD_SECONDS,
            }
        )
    elif case.point == "compensating":
        assert target.undo is not None
        hold = target.undo
        after = _matches(hold, kind_steps[: case.step + 1])
        sim.add_faults(
            {
                "kind": "latency",
                "method": hold.method,
                "path": hold.path,
                "after": after,
                "seconds": HOLD_SECONDS,
            }
        )

    def counted() -> int:
        return sum(n for k, n in sim.writes().items() if k.startswith(hold.counter_prefix)) - sum(
            n for k, n in baseline.items() if k.startswith(hold.counter_prefix)
        )

    def reached() -> bool:
        if case.point in ("before_write", "compensating"):
            return sim.fired() >= 1
        if case.point == "after_write":
            return sim.fired() >= 1 and counted() >= 1
        row = steps_of(ledger, saga.id).get(case.step)
        return row is not None and (
            row.status is StepStatus.COMPLETED
            or (target.progress is not None and target.progress in row.output)
        )

    proc = cli(["resume", str(saga.id)], env)
    try:
        deadline = time.monotonic() + 90
        while not reached():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                return Verdict(
                    False, detail=f"runner exited {proc.returncode} before {case.point}: {err[-500:]}"
                )
            if time.monotonic() > deadline:
                return Verdict(False, detail=f"{case.point} never reached")
            time.sleep(0.02)
        if case.point == "before_write" and counted():
            return Verdict(False, detail="harness: the held write was already applied")
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    sim.clear_faults()
    if case.point == "before_write" and counted():
        return Verdict(False, detail="harness: the held write landed after the kill")
    # Recovery with short provider timeouts: a recovery that waits on the wrong thing fails fast.
    quick = settings.model_copy(
        update={"action_timeout_seconds": 5.0, "snapshot_listing_timeout_seconds": 4.0}
    )
    advance_until_terminal(ledger, quick, saga.id)
    return judge(sim, ledger, saga.id, before, inputs, expect)
