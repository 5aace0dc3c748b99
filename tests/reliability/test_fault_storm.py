"""Many sagas at once under a seeded storm of 5xx, HTML 503s, 429s, latency, lost responses and
listing lag. Replay a failure with ``scripts/reliability --only storm --seed <seed>``."""

from __future__ import annotations

import os

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.settings import Settings, load_settings
from tests.reliability import harness

pytestmark = pytest.mark.slow

SAGAS = 16
SEED = int(os.environ.get("RELIABILITY_SEED", "20261127"))


@pytest.mark.parametrize("seed", [SEED])
def test_sagas_under_a_fault_storm_end_whole_with_nothing_leaked_or_doubled(
    seed: int, sim: httpx.Client, ledger: Ledger, settings: Settings, rate_scaled: dict[str, str]
) -> None:
    target = harness.Sim(str(sim.base_url).rstrip("/"), rate_scaled["SAGAS_DO_TOKEN"])
    try:
        results = harness.fault_storm(target, ledger, load_settings(), SAGAS, seed)
    finally:
        target.close()
    failed = [f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived]
    assert len(results) == SAGAS + 1, f"judged {len(results)} cases of {SAGAS} sagas and the world"
    assert not failed, f"seed {seed}: " + harness.summary_line(results) + "\n" + "\n".join(failed)
