"""Several runners (threads and ``sagas resume`` processes) on each of many sagas: one runs, the
others are told it is busy, and every provider write happens exactly once."""

from __future__ import annotations

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.settings import load_settings
from tests.reliability import harness

pytestmark = pytest.mark.slow

SAGAS = 8


def test_racing_runners_on_one_saga_run_it_once_and_write_each_resource_once(
    sim: httpx.Client, ledger: Ledger, rate_scaled: dict[str, str]
) -> None:
    target = harness.Sim(str(sim.base_url).rstrip("/"), rate_scaled["SAGAS_DO_TOKEN"])
    try:
        results = harness.racing_runners(target, ledger, load_settings(), rate_scaled, SAGAS, subprocesses=2)
    finally:
        target.close()
    failed = [f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived]
    assert len(results) == SAGAS, f"judged {len(results)} sagas of {SAGAS}"
    assert not failed, harness.summary_line(results) + "\n" + "\n".join(failed)
