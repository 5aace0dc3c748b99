"""The cancel matrix, bounded for CI: a cancel requested while a step waits on the provider, for a
step of every kind and every pivot (before it, during it, after it), each judged on the simulator and
the ledger. ``scripts/reliability --only cancel`` runs every step of every kind."""

from __future__ import annotations

import pytest

from tests.reliability import harness
from tests.reliability.cli import Worker

pytestmark = pytest.mark.slow

# (scenario, step): every kind; every hold (a slow action of each type, a lingering delete, a DNS
# write in flight); every pivot with the step before it, the pivot itself and the step after it.
CI_POINTS = {
    ("provision", 0),  # create_droplet: its create action
    ("provision", 1),  # create_dns_record: its write in flight, the kind's last step
    ("suspend", 1),  # power_off_droplet: its shutdown
    ("resume", 0),  # power_on_droplet
    ("update", 2),  # resize_droplet without the disk: compensatable
    ("snapshot", 0),  # create_droplet_snapshot
    ("rollback", 1),  # before the pivot
    ("rollback", 2),  # restore_droplet: during the pivot
    ("rollback", 3),  # after it
    ("offboard", 2),  # delete_dns_record: before the pivot
    ("offboard", 3),  # delete_droplet: during the pivot (its delete lingers)
    ("update+disk", 2),  # resize_droplet with the disk: during the pivot
    ("update+disk", 3),  # after it
}
CI_CASES = [c for c in harness.cancel_cases() if (c.scenario.name, c.step) in CI_POINTS]


def test_the_ci_cancel_cases_cover_every_kind_and_every_pivot() -> None:
    assert len(CI_CASES) == len(CI_POINTS)
    assert {c.scenario.name for c in CI_CASES} == {s.name for s in harness.scenarios()}
    pivots = {(s.name, s.pivot) for s in harness.scenarios() if s.pivot is not None}
    assert pivots == {("rollback", 2), ("offboard", 3), ("update+disk", 2)}
    assert pivots <= {(c.scenario.name, c.step) for c in CI_CASES}


def test_a_cancel_while_a_step_waits_rolls_back_before_the_pivot_and_finishes_forward_from_it(
    workers: list[Worker],
) -> None:
    by_sim = {id(w.sim): w for w in workers}

    def one(case: harness.CancelCase, sim: harness.Sim) -> harness.CaseResult:
        w = by_sim[id(sim)]
        return harness.run_cancel_case(case, sim, w.fresh_ledger(), w.settings)

    results = harness.run_cases_in_parallel(CI_CASES, one, [w.sim for w in workers])
    failed = sorted(f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived)
    line = harness.held_line("cancel", results)
    print(line, *failed, sep="\n")
    assert len(results) == len(CI_CASES) == 13, line
    assert not failed, line + "\n" + "\n".join(failed)
