"""What the cancel and fault matrices share: the sagas they run, and the outcome each may end in.

A **scenario** is a fixed kind with the inputs ``prepare`` gives it, plus ``update+disk`` (an update
with ``resize_disk``: its resize is a pivot). A case of either matrix disturbs one step of one
scenario; what it may end in depends on where that step stands against the scenario's first pivot
(DESIGN, "the point of no return is the pivot's write"):

- before the pivot (or in a kind with none): ``rolled_back`` with the provider exactly as before the
  saga (the fault matrix also takes ``completed``: the fault was absorbed);
- at the pivot or after it: ``completed``, or ``failed`` for an operator; never rolled back. Whatever
  the steps before the pivot made (offboard's final snapshot, rollback's safety snapshot) is still
  there, and nothing the saga did not set out to delete is gone.

Either way nothing is doubled or leaked: the world is what the ledger's completed steps made, with the
step a ``failed`` saga stopped in counted either way (it may or may not have happened).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sagas.errors import LedgerError, SagaBusyError
from sagas.ledger.store import Ledger
from sagas.models import Reversibility, SagaRun, SagaStatus, StepStatus
from sagas.runner import Invoke, Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.reliability.harness.world import (
    FIXED_KINDS,
    STEP_WRITES,
    CaseResult,
    Sim,
    Verdict,
    _diff,
    doubled_creates,
    steps_of,
    wait_for,
)
from tests.test_kinds import expected_after, prepare

BEFORE_PIVOT = frozenset({SagaStatus.ROLLED_BACK})
PAST_PIVOT = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED})


@dataclass(frozen=True)
class Scenario:
    """A kind, and what its inputs add to ``prepare``'s (``resize_disk`` makes update's resize a pivot)."""

    kind: str
    extra: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.kind

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(catalog().kind(self.kind).steps or ())

    @property
    def pivot(self) -> int | None:
        """The index of the first pivot step, if the kind has one with these inputs."""
        inputs = dict(self.extra)
        for i, name in enumerate(self.steps):
            if catalog().step(name).reversibility_for(inputs) is Reversibility.PIVOT:
                return i
        return None

    def past_pivot(self, step: int) -> bool:
        return self.pivot is not None and step >= self.pivot

    def prepare(self, sim: Sim) -> dict[str, Any]:
        return {**prepare(self.kind, sim.control, sim.api), **dict(self.extra)}

    def __str__(self) -> str:
        return self.name


def scenarios() -> list[Scenario]:
    """Every fixed kind, and update with a disk resize (the only input that adds a pivot)."""
    return [Scenario(k) for k in FIXED_KINDS] + [Scenario("update", (("resize_disk", True),), "update+disk")]


def scenario(name: str) -> Scenario:
    return next(s for s in scenarios() if s.name == name)


# -- running a saga to an end ----------------------------------------------------------------------


def run_to_an_end(
    ledger: Ledger,
    settings: Settings,
    saga_id: uuid.UUID,
    *,
    timeout: float = 90.0,
    invoke: Invoke[Any] | None = None,
) -> SagaRun:
    """Advance the saga (waiting out a runner that still holds it) until it is finished or needs an
    operator (``failed``, ``compensation_failed``): those are outcomes to judge, not to resume."""
    deadline = time.monotonic() + timeout
    while True:
        saga = ledger.get_saga(saga_id)
        if saga.status.is_terminal or saga.status.needs_operator or time.monotonic() > deadline:
            return saga
        services = Services(settings)
        try:
            if invoke is None:
                Runner(ledger, catalog(), services).advance(saga_id)
            else:
                Runner(ledger, catalog(), services, invoke=invoke).advance(saga_id)
        except (SagaBusyError, LedgerError):
            time.sleep(0.2)
        finally:
            services.close()


# -- judging an outcome ----------------------------------------------------------------------------


def quiesce(sim: Sim, timeout: float = 60.0) -> None:
    """Wait until every provider action has finished and what it sets has settled.

    An undo that returned while its step's action was still running looks right until that action
    lands (a shutdown turns the droplet off a moment after the saga said ``rolled_back``): judging
    before then would call a broken rollback good.
    """

    def settled() -> dict[str, Any] | None:
        state = sim.state()
        return None if any(a["status"] == "in-progress" for a in state["actions"]) else state

    state = wait_for(settled, timeout, "every provider action to finish")
    config = state["config"]
    lags = ("status_lag_seconds", "snapshot_listing_lag_seconds", "snapshot_delete_linger_seconds")
    time.sleep(config["time_scale"] * max(config[k] for k in lags) + 0.05)


def judge_outcome(
    sim: Sim,
    ledger: Ledger,
    saga_id: uuid.UUID,
    before: dict[str, Any],
    inputs: dict[str, Any],
    allowed: Collection[SagaStatus],
    *,
    past_pivot: bool,
) -> Verdict:
    """Did the saga end in an allowed status, with the world exactly what its ledger says?"""
    quiesce(sim)
    saga = ledger.get_saga(saga_id)
    rows = steps_of(ledger, saga_id)
    done = [saga.step_names[i] for i, r in sorted(rows.items()) if r.status is StepStatus.COMPLETED]
    if saga.status is SagaStatus.ROLLED_BACK:
        candidates = [before]
    elif saga.status is SagaStatus.COMPLETED:
        candidates = [expected_after([s for s in done if s in STEP_WRITES], before, saga, inputs)]
    else:
        # Stopped for an operator: the step it stopped in may or may not have happened.
        stopped = next(
            (saga.step_names[i] for i, r in sorted(rows.items()) if r.status is not StepStatus.COMPLETED),
            None,
        )
        variants = [done] + ([[*done, stopped]] if stopped is not None else [])
        candidates = [
            expected_after([s for s in v if s in STEP_WRITES], before, saga, inputs) for v in variants
        ]
    # A deleted snapshot lingers for a moment; a status flips after a lag: let the world settle.
    deadline = time.monotonic() + 5
    while True:
        actual = sim.world()
        diffs = [_diff(expected, actual) for expected in candidates]
        extra, missing, notes = min(diffs, key=lambda d: d[0] + d[1])
        if not (extra or missing) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problems = list(notes)
    if saga.status not in allowed:
        want = " or ".join(sorted(s.value for s in allowed))
        problems.insert(0, f"saga ended {saga.status.value} (want {want}): {saga.error}")
    if past_pivot:
        live = set(actual["snapshots"])
        for row in rows.values():
            name = row.output.get("snapshot_name")
            if row.step_name == "create_droplet_snapshot" and name and name not in live:
                problems.append(f"the snapshot made before the pivot ({name}) was deleted")
    doubled = doubled_creates(sim.writes())
    problems += [f"doubled {d}" for d in doubled]
    return Verdict(
        survived=not problems,
        leaked=extra,
        doubled=len(doubled),
        detail="; ".join(problems),
        outcome=saga.status.value,
    )


def held_line(what: str, results: list[CaseResult]) -> str:
    """``cancel points: X/Y held``: a point held when its saga ended as it may, nothing lost or doubled."""
    held = sum(r.verdict.survived for r in results)
    return f"{what} points: {held}/{len(results)} held"
