"""The crash matrix, bounded for CI: SIGKILL ``sagas resume`` at every point of every step of the
snapshot and provision kinds (plus the cases that found bugs), recover after the lease, and check
that the simulator holds exactly what the ledger says. ``scripts/reliability`` runs every kind."""

from __future__ import annotations

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.settings import Settings
from tests.reliability import harness
from tests.reliability.cli import Worker

pytestmark = pytest.mark.slow

CI_CASES = harness.crash_cases(["snapshot", "provision"])


def test_crash_matrix_snapshot_and_provision(workers: list[Worker]) -> None:
    by_sim = {id(w.sim): w for w in workers}

    def one(case: harness.CrashCase, sim: harness.Sim) -> harness.CaseResult:
        w = by_sim[id(sim)]
        return harness.run_crash_case(case, sim, w.fresh_ledger(), w.settings, w.env)

    results = harness.run_cases_in_parallel(CI_CASES, one, [w.sim for w in workers])
    failed = [f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived]
    line = harness.summary_line(results)
    assert not failed and len(results) == len(CI_CASES), line + "\n" + "\n".join(failed)


# Each of these found a bug: the recovering runner
# adopts a provider action that is not its own, because "ours" means "of this type, started after
# the step did (less 30 s of clock skew)". Killed while its undo's POST was held, the runner leaves
# ``undo_*_posting``; the next runner adopts the forward resize (same type), or the power_off /
# snapshot the test's own set-up made seconds before, waits for an outcome that never comes, and
# the saga ends ``compensation_failed`` (or the step fails) with the droplet left changed.
BUG_CASES = [
    harness.CrashCase("update", 2, "compensating"),  # undo resize adopts the forward resize
    harness.CrashCase("resume", 0, "compensating"),  # undo power_on adopts the set-up's power_off
    harness.CrashCase("rollback", 0, "before_write"),  # the snapshot adopts the set-up's snapshot
]


@pytest.mark.parametrize("case", BUG_CASES, ids=str)
def test_recovery_adopts_only_its_own_action(
    case: harness.CrashCase, sim: httpx.Client, ledger: Ledger, settings: Settings, env: dict[str, str]
) -> None:
    target = harness.Sim(str(sim.base_url).rstrip("/"), env["SAGAS_DO_TOKEN"])
    try:
        result = harness.run_crash_case(case, target, ledger, settings, env)
    finally:
        target.close()
    assert result.verdict.survived, result.verdict.detail


def test_undo_of_a_snapshot_of_a_missing_droplet_succeeds(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    """Found by the secrets run: a snapshot saga on a droplet that does not exist fails its step
    with a 404 (right), then its undo looks for an in-doubt snapshot in the droplet's listing, gets
    the same 404 and counts it a failed undo: ``compensation_failed`` where nothing ever happened.
    DESIGN rule 4: a compensation that finds the resource gone has succeeded."""
    from sagas.models import SagaStatus
    from sagas.runner import Runner
    from sagas.services import Services
    from tasks.registry import catalog

    saga, _ = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": 999999}))
    services = Services(settings)
    try:
        final = Runner(ledger, catalog(), services).advance(saga.id)
    finally:
        services.close()
    assert final.status is SagaStatus.ROLLED_BACK, final.error
