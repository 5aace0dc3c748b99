"""Fixtures of the reliability suite: private simulators and ledgers for cases run side by side."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import TOKEN
from tests.reliability import harness
from tests.reliability.cli import Worker, scratch_databases

CRASH_WORKERS = 3


@pytest.fixture
def rate_scaled(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, str]:
    """The client's rate budget on the simulator's clock (time_scale 0.02), for many sagas at once."""
    monkeypatch.setenv("SAGAS_DO_RATE_WINDOW_SCALE", "0.02")
    return {**env, "SAGAS_DO_RATE_WINDOW_SCALE": "0.02"}


@pytest.fixture
def workers(rate_scaled: dict[str, str]) -> Iterator[list[Worker]]:
    """A few (simulator, ledger database) pairs: simulators number droplets alike, so each needs
    its own ledger (a droplet's lock is its id)."""
    with scratch_databases(CRASH_WORKERS) as urls, harness.simulators(CRASH_WORKERS, TOKEN) as sims:
        yield [Worker(sim, url, rate_scaled) for sim, url in zip(sims, urls, strict=True)]
