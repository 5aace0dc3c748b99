"""The fault matrix, bounded for CI: every provider write of every kind, and every call of every
pivot step, answered once with a 5xx after the write was applied, a dropped response and a timeout;
each saga run to its end and judged on the simulator and the ledger. ``scripts/reliability --only
faults`` answers every call of every step (reads too) that way."""

from __future__ import annotations

import pytest

from tests.reliability import harness
from tests.reliability.cli import Worker

pytestmark = pytest.mark.slow


def in_ci(scenario: harness.Scenario, call: harness.ProviderCall, fault: str) -> bool:
    return call.method != "GET" or call.step == scenario.pivot


def test_a_fault_on_any_write_or_on_a_pivot_is_absorbed_rolled_back_or_left_for_an_operator(
    workers: list[Worker],
) -> None:
    first = workers[0]
    cases = harness.fault_cases(first.sim, first.fresh_ledger, first.settings, keep=in_ci)
    # Every kind and every pivot is in, each with all three faults.
    assert {c.scenario.name for c in cases} == {s.name for s in harness.scenarios()}
    pivots = {(s.name, s.pivot) for s in harness.scenarios() if s.pivot is not None}
    assert pivots <= {(c.scenario.name, c.call.step) for c in cases}
    assert {c.fault for c in cases} == set(harness.FAULTS)
    by_sim = {id(w.sim): w for w in workers}

    def one(case: harness.FaultCase, sim: harness.Sim) -> harness.CaseResult:
        w = by_sim[id(sim)]
        return harness.run_fault_case(case, sim, w.fresh_ledger(), w.settings)

    results = harness.run_cases_in_parallel(cases, one, [w.sim for w in workers])
    failed = sorted(f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived)
    line = harness.held_line("fault", results)
    print(line, *failed, sep="\n")
    assert len(results) == len(cases) >= 80, line
    assert not failed, line + "\n" + "\n".join(failed)
