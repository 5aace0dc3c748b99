"""Shared fixtures: a real Postgres, a real simulator over loopback, settings pointing at both.

Postgres: SAGAS_TEST_PG_URL when set (CI: the machine's server), else the server on
127.0.0.1:5432 when it answers, else an embedded one in a temporary directory. Each test session
gets its own database; each test starts from empty tables (TRUNCATE, a few ms).
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from sagas.ledger.database import dispose_engines, engine_for, normalise_url
from sagas.ledger.store import Ledger
from sagas.settings import Settings, load_settings
from sagas.telemetry import stop_flushing

# Tests of a saga's mechanics run every kind straight through: offboard and rollback would otherwise
# stop for a person's approval (tests/test_approval.py tests that gate).
MECHANICS = {"require_approval": False}
TOKEN = "dop_v1_canary" + uuid.uuid4().hex  # a canary: it must never show up in logs or rows
REPO = Path(__file__).resolve().parent.parent


def _server_url() -> str:
    configured = os.environ.get("SAGAS_TEST_PG_URL")
    if configured:
        return configured
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(local, connect_timeout=2).close()
        return local
    except psycopg.OperationalError:
        pass
    import tempfile

    from sagas.ledger.embedded import embedded_server_url

    return embedded_server_url(Path(tempfile.mkdtemp(prefix="sagas-test-pg-")) / "pgdata")


@pytest.fixture(scope="module", autouse=True)
def _collect_what_the_module_left() -> Iterator[None]:
    """Collect garbage as each module ends, so that anything it left open (a connection, a file)
    is reported against that module's last test, not against whichever test the collector happens
    to run in later (warnings are errors here)."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    server = normalise_url(_server_url()).replace("postgresql+psycopg://", "postgresql://")
    name = f"sagas_test_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server, name)
    yield url
    stop_flushing()  # this process's last metric counts go to the database before it is dropped
    dispose_engines()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    from sagas.digitalocean.simulator import SimulatorConfig, run_simulator_in_thread

    with run_simulator_in_thread(SimulatorConfig(time_scale=0.02)) as sim:
        yield sim


@pytest.fixture
def sim(simulator: Any) -> Iterator[httpx.Client]:
    """A control client for the simulator, reset before each test."""
    from sagas.digitalocean.simulator import SimulatorConfig

    with httpx.Client(base_url=simulator.base_url, timeout=10) as control:
        control.post("/_sim/reset").raise_for_status()
        # Every setting back to its default (a test may have lowered the rate limit), 50x fast.
        defaults = SimulatorConfig(time_scale=0.02).model_dump()
        control.post("/_sim/config", json=defaults).raise_for_status()
        yield control


SAGAS_ENV = {
    "SAGAS_DO_TOKEN": TOKEN,
    "SAGAS_LEASE_SECONDS": "3",
    "SAGAS_POLL_INITIAL_SECONDS": "0.02",
    "SAGAS_POLL_MAX_SECONDS": "0.2",
    "SAGAS_SNAPSHOT_LISTING_TIMEOUT_SECONDS": "10",
    "SAGAS_ACTION_TIMEOUT_SECONDS": "20",
    "SAGAS_COMPENSATION_ATTEMPTS": "3",
    "SAGAS_COMPENSATION_BACKOFF_SECONDS": "0.01",
    "SAGAS_DO_TIMEOUT_SECONDS": "5",
    "SAGAS_DO_RETRY_BASE_SECONDS": "0.01",
    "SAGAS_DO_RETRY_MAX_SECONDS": "0.05",
}


@pytest.fixture
def env(database_url: str, simulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """SAGAS_* variables for this test, set in os.environ (flows and subprocesses read them)."""
    values = {**SAGAS_ENV, "SAGAS_DATABASE_URL": database_url, "SAGAS_DO_API_URL": simulator.base_url}
    values["SAGAS_HOME"] = str(tmp_path / "home")
    for key in [k for k in os.environ if k.startswith("SAGAS_") and k not in values]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture
def ledger(settings: Settings) -> Ledger:
    engine = engine_for(settings)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE saga_runs CASCADE"))
    return Ledger(engine)


def seed_droplet(sim: httpx.Client, name: str = "web-1") -> int:
    response = sim.post("/_sim/droplets", json={"name": name})
    response.raise_for_status()
    body = response.json()
    return int(body["droplet"]["id"] if "droplet" in body else body["id"])


def live_snapshots(sim: httpx.Client) -> list[dict[str, Any]]:
    return [s for s in sim.get("/_sim/state").json()["snapshots"] if not s.get("deleted")]


def fail_snapshot_deletes(sim: httpx.Client) -> None:
    """From now on the simulator answers every snapshot DELETE with a 500 (not applied), until its
    faults are cleared: a compensation that cannot undo a snapshot."""
    sim.post(
        "/_sim/faults",
        json={"rules": [{"method": "DELETE", "path": "^/v2/snapshots/", "kind": "error_500", "times": None}]},
    ).raise_for_status()


@pytest.fixture
def api(simulator: Any, env: dict[str, str]) -> Iterator[httpx.Client]:
    """The simulator's DigitalOcean API itself, with the test token (for arranging a world)."""
    headers = {"Authorization": f"Bearer {env['SAGAS_DO_TOKEN']}"}
    with httpx.Client(base_url=simulator.base_url, headers=headers, timeout=10) as client:
        yield client


def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll a condition in real time; fail naming what never happened."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def advance_saga(ledger: Ledger, settings: Settings, saga_id: uuid.UUID) -> Any:
    """Advance a recorded saga as far as it goes with the core runner and the registry's catalog (no
    Prefect), in this process, on services of its own that are closed afterwards."""
    from sagas.runner import Runner
    from sagas.services import Services
    from tasks.registry import catalog

    services = Services(settings)
    try:
        return Runner(ledger, catalog(), services).advance(saga_id)
    finally:
        services.close()


def run_saga(
    ledger: Ledger, settings: Settings, kind: str, inputs: dict[str, Any], steps: list[str] | None = None
) -> Any:
    """Record a saga and run it to its end with the core runner (no Prefect), in this process."""
    from tasks.registry import catalog

    saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, steps=steps, options=MECHANICS))
    return advance_saga(ledger, settings, saga.id)


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (the test harness's server), shared by the flow runs of the module that asks."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def run_cli(*args: str) -> Any:
    """The ``sagas`` CLI in this process (typer's runner); an exception in it fails the test."""
    from typer.testing import CliRunner

    from app.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def recorder() -> Any:
    """Steps that record what the runner asks of them (tests/support/recorder.py)."""
    from tests.support.recorder import Recorder

    return Recorder()
