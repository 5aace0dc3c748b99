"""The fault matrix: each provider call of each step, answered once with a fault, the saga run to an end.

A **provider call** is one request a step makes on a clean run of its scenario, read from the
simulator's request journal (``/_sim/requests``): the runner is given an ``invoke`` that notes the
journal's position before and after each step, so every request is attributed to its step without
clocks. A **fault case** is (scenario, call, fault), with three faults:

- ``error_500_applied``: the request is served (a write is applied), then answered with a JSON 500;
- ``lose_response``: the request is served, then the connection drops mid-answer;
- ``timeout``: the request is served, then its answer held (``slow_response``) longer than the
  client's read timeout (``CLIENT_TIMEOUT_SECONDS``, lowered for these runs so a case takes seconds).

The rule is armed right after the world is prepared, matching exactly that request: its method, its
path with ids generalised, and ``after`` = how many earlier requests of the clean run it also matches.
That only names the same request when a run sends the same requests up to it, so these runs use a
simulator clock so fast (``TIME_SCALE``) that every action, lag and linger is over before the next
request: no wait polls twice. Each case checks afterwards, in the journal, that its fault landed on
the request it names and that every request before it was the clean run's; if not, the case fails as
a harness failure rather than judge a different point.

Expected (``scenarios``): a fault before the scenario's pivot ends ``completed`` (absorbed) or
``rolled_back`` with the provider as before; one at or after the pivot ends ``completed`` or ``failed``
for an operator; never anything doubled, leaked, or deleted that the saga did not set out to delete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.runner import Phase
from sagas.settings import Settings
from sagas.steps import StepContext, StepDefinition
from tasks.registry import catalog
from tests.conftest import MECHANICS
from tests.reliability.harness.scenarios import (
    PAST_PIVOT,
    Scenario,
    judge_outcome,
    run_to_an_end,
    scenarios,
)
from tests.reliability.harness.world import CaseResult, Sim, Verdict

T = TypeVar("T")

FAULTS = ("error_500_applied", "lose_response", "timeout")
TIME_SCALE = 0.0001  # a 2 s action lasts 0.2 ms: over before the next request arrives
CLIENT_TIMEOUT_SECONDS = 2.0  # the client's read timeout in these runs (SAGAS_DO_TIMEOUT_SECONDS)
TIMEOUT_FAULT_SECONDS = 3.0  # a ``timeout`` holds the answer this long: past the client's timeout
BEFORE_PIVOT = frozenset({SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK})

Signature = tuple[str, str]  # (method, generalised path): what a fault rule can tell apart


def generalised(path: str) -> str:
    """The rule's path: this request's, with each numeric id matching any id (ids differ per run)."""
    parts = [r"\d+" if part.isdigit() else re.escape(part) for part in path.split("/")]
    return "^" + "/".join(parts) + "$"


def readable(path: str) -> str:
    return "/".join("{id}" if part.isdigit() else part for part in path.split("/"))


@dataclass(frozen=True)
class ProviderCall:
    """The ``position``-th request after the world was prepared, made by step ``step``."""

    step: int
    step_name: str
    method: str
    path: str  # as sent on the clean run
    position: int
    after: int  # earlier requests of the clean run the rule also matches
    occurrence: int  # 1 for the step's first request of this method and route, 2 for its second...

    @property
    def rule_path(self) -> str:
        return generalised(self.path)


@dataclass(frozen=True)
class FaultCase:
    scenario: Scenario
    call: ProviderCall
    fault: str
    clean: tuple[Signature, ...]  # the clean run's requests, to check a case hit the same one

    def __str__(self) -> str:
        c = self.call
        return (
            f"{self.scenario}[{c.step}:{c.step_name}] {c.method} {readable(c.path)}"
            f" #{c.occurrence}@{self.fault}"
        )

    def rule(self) -> dict[str, Any]:
        kind = "slow_response" if self.fault == "timeout" else self.fault
        rule: dict[str, Any] = {
            "kind": kind,
            "method": self.call.method,
            "path": self.call.rule_path,
            "after": self.call.after,
            "times": 1,
        }
        if self.fault == "timeout":
            rule["seconds"] = TIMEOUT_FAULT_SECONDS
        return rule


def _signature(request: dict[str, Any]) -> Signature:
    return (str(request["method"]), generalised(str(request["path"])))


def matrix_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"do_timeout_seconds": CLIENT_TIMEOUT_SECONDS})


# -- the clean run ---------------------------------------------------------------------------------


def provider_calls(
    scenario: Scenario, sim: Sim, ledger: Ledger, settings: Settings
) -> tuple[list[ProviderCall], tuple[Signature, ...]]:
    """Run the scenario once without faults; every request its steps made, attributed to its step."""
    sim.reset(TIME_SCALE)
    inputs = scenario.prepare(sim)
    saga, _ = ledger.create_saga(catalog().new_saga(scenario.kind, inputs, options=MECHANICS))
    baseline = sim.last_request()
    spans: list[tuple[int, int, int]] = []  # (step index, last request before it, its last request)

    def invoke(step: StepDefinition, phase: Phase, fn: Callable[[StepContext], T], ctx: StepContext) -> T:
        first = sim.last_request()
        try:
            return fn(ctx)
        finally:
            if phase is Phase.EXECUTE:
                spans.append((ctx.step_idx, first, sim.last_request()))

    final = run_to_an_end(ledger, matrix_settings(settings), saga.id, invoke=invoke)
    if final.status is not SagaStatus.COMPLETED:
        raise AssertionError(f"the clean run of {scenario} ended {final.status.value}: {final.error}")
    requests = sim.requests(baseline)
    calls: list[ProviderCall] = []
    for position, request in enumerate(requests):
        owner = next((idx for idx, lo, hi in spans if lo < int(request["seq"]) <= hi), None)
        if owner is None:
            continue  # not made by a step (none is expected: the runner itself makes no request)
        signature = _signature(request)
        earlier = [_signature(r) for r in requests[:position]]
        mine = [
            _signature(r)
            for r in requests[:position]
            if any(idx == owner and lo < int(r["seq"]) <= hi for idx, lo, hi in spans)
        ]
        calls.append(
            ProviderCall(
                step=owner,
                step_name=scenario.steps[owner],
                method=str(request["method"]),
                path=str(request["path"]),
                position=position,
                after=earlier.count(signature),
                occurrence=mine.count(signature) + 1,
            )
        )
    return calls, tuple(_signature(r) for r in requests)


def fault_cases(
    sim: Sim,
    ledger_for: Callable[[], Ledger],
    settings: Settings,
    names: list[str] | None = None,
    *,
    faults: tuple[str, ...] = FAULTS,
    keep: Callable[[Scenario, ProviderCall, str], bool] | None = None,
) -> list[FaultCase]:
    """Every (scenario, call, fault), from one clean run of each scenario on ``sim``.

    ``ledger_for`` gives a fresh (emptied) ledger for each clean run; ``keep`` narrows the cases.
    """
    cases = []
    for scenario in scenarios():
        if names is not None and scenario.name not in names:
            continue
        calls, clean = provider_calls(scenario, sim, ledger_for(), settings)
        for call in calls:
            for fault in faults:
                if keep is None or keep(scenario, call, fault):
                    cases.append(FaultCase(scenario, call, fault, clean))
    return cases


# -- one case --------------------------------------------------------------------------------------


def run_fault_case(case: FaultCase, sim: Sim, ledger: Ledger, settings: Settings) -> CaseResult:
    started = time.monotonic()
    try:
        verdict = _fault_case(case, sim, ledger, settings)
    except Exception as exc:  # the harness itself failed for this case: it did not hold
        verdict = Verdict(False, detail=f"harness: {type(exc).__name__}: {exc}")
    finally:
        sim.clear_faults()
    return CaseResult(str(case), verdict, time.monotonic() - started)


def _fault_case(case: FaultCase, sim: Sim, ledger: Ledger, settings: Settings) -> Verdict:
    sim.reset(TIME_SCALE)
    inputs = case.scenario.prepare(sim)
    before = sim.world()
    saga, _ = ledger.create_saga(catalog().new_saga(case.scenario.kind, inputs, options=MECHANICS))
    baseline = sim.last_request()
    sim.add_faults(case.rule())
    final = run_to_an_end(ledger, matrix_settings(settings), saga.id)
    seen = sim.requests(baseline)
    faulted = [i for i, r in enumerate(seen) if r["fault"] is not None]
    position = case.call.position
    if (
        faulted != [position]
        or tuple(_signature(r) for r in seen[: position + 1]) != case.clean[: position + 1]
    ):
        landed = ", ".join(f"#{i} {seen[i]['method']} {readable(seen[i]['path'])}" for i in faulted)
        return Verdict(
            False,
            detail=f"harness: the fault landed on [{landed or 'nothing'}], not request #{position}"
            " of the clean run (the requests before it differed)",
        )
    past = case.scenario.past_pivot(case.call.step)
    allowed = PAST_PIVOT if past else BEFORE_PIVOT
    verdict = judge_outcome(sim, ledger, saga.id, before, inputs, allowed, past_pivot=past)
    if not final.status.is_terminal and not final.status.needs_operator:
        verdict.detail += f"; still {final.status.value} after 90s"
        verdict.survived = False
    return verdict
