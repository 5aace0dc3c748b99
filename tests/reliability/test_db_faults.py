"""Postgres connections killed mid-saga while it polls a slow action: it finishes, once."""

from __future__ import annotations

import httpx
import pytest

from sagas.ledger.store import Ledger
from sagas.settings import Settings
from tests.reliability import harness

pytestmark = pytest.mark.slow

SAGAS = 2


def test_a_saga_whose_ledger_connections_are_killed_mid_poll_completes_once(
    sim: httpx.Client, ledger: Ledger, settings: Settings, env: dict[str, str]
) -> None:
    target = harness.Sim(str(sim.base_url).rstrip("/"), env["SAGAS_DO_TOKEN"])
    try:
        results = harness.database_faults(target, ledger, settings, SAGAS)
    finally:
        target.close()
    failed = [f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived]
    assert len(results) == SAGAS, f"judged {len(results)} sagas of {SAGAS}"
    assert not failed, harness.summary_line(results) + "\n" + "\n".join(failed)


BLIPS = 2


def test_a_sub_second_ledger_blip_mid_poll_is_ridden_out_with_no_compensation(
    sim: httpx.Client, ledger: Ledger, settings: Settings, env: dict[str, str]
) -> None:
    target = harness.Sim(str(sim.base_url).rstrip("/"), env["SAGAS_DO_TOKEN"])
    try:
        results = harness.ledger_blips(target, ledger, settings, BLIPS)
    finally:
        target.close()
    failed = [f"{r.name}: {r.verdict.detail}" for r in results if not r.verdict.survived]
    assert len(results) == BLIPS, f"judged {len(results)} sagas of {BLIPS}"
    assert not failed, harness.summary_line(results) + "\n" + "\n".join(failed)
