"""Database faults: the ledger's connections killed while sagas poll a slow provider action."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sagas.errors import LedgerError, SagaError
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.reliability.harness.world import (
    CaseResult,
    Sim,
    Verdict,
    advance_until_terminal,
    seed,
    steps_of,
    wait_for,
)


def kill_ledger_connections(ledger: Ledger) -> int:
    """Terminate every other connection to the ledger's database, from a connection of our own."""
    import psycopg

    url = ledger._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def database_faults(
    sim: Sim, ledger: Ledger, settings: Settings, count: int, *, kills: int = 3
) -> list[CaseResult]:
    """Postgres connections killed (``kills`` times) while each saga polls a slow snapshot action:
    the saga finishes (after a second advance if the first raised a LedgerError), once."""
    results = []
    for i in range(count):
        started = time.monotonic()
        sim.reset()
        sim.control.post("/_sim/config", json={"action_seconds": 75}).raise_for_status()  # 1.5 s wall
        droplet = seed(sim, f"web-{i}")
        kind, steps = (
            ("test", ["create_droplet_snapshot", "power_off_droplet"]) if i % 2 else ("snapshot", None)
        )
        saga, _ = ledger.create_saga(catalog().new_saga(kind, {"droplet_id": droplet}, steps=steps))
        first: list[str] = []

        def run(saga_id: uuid.UUID = saga.id, first: list[str] = first) -> None:
            services = Services(settings)
            try:
                first.append(Runner(ledger, catalog(), services).advance(saga_id).status.value)
            except SagaError as exc:
                first.append(f"{type(exc).__name__}")
            except BaseException as exc:
                first.append(f"unhandled {type(exc).__name__}: {exc}")
            finally:
                services.close()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        problems = []
        try:
            wait_for(
                lambda saga_id=saga.id: "action_id" in steps_of(ledger, saga_id).get(0, _NO_ROW).output,
                15,
                "the snapshot action to be recorded",
            )
            killed = 0
            for _ in range(kills):
                killed += kill_ledger_connections(ledger)
                time.sleep(0.3)
        except (TimeoutError, LedgerError) as exc:
            problems.append(f"harness: {exc}")
        worker.join(60)
        final = advance_until_terminal(ledger, settings, saga.id)
        if any(f.startswith("unhandled") for f in first):
            problems.append(first[0])
        if final.status is not SagaStatus.COMPLETED:
            problems.append(f"ended {final.status.value}: {final.error}")
        name = f"arcadia-snap-{droplet}-{saga.id.hex[:8]}"
        n = sim.writes().get(f"snapshot:{name}", 0)
        if n != 1:
            problems.append(f"writes[snapshot:{name}] = {n}, want exactly 1")
        live = [s["name"] for s in sim.state()["snapshots"] if not s.get("deleted")]
        if live != [name]:
            problems.append(f"live snapshots {live}, want [{name}]")
        results.append(
            CaseResult(
                f"db faults {kind} #{i} (first advance: {first[0] if first else 'hung'})",
                Verdict(
                    not problems, doubled=int(n > 1), leaked=max(len(live) - 1, 0), detail="; ".join(problems)
                ),
                time.monotonic() - started,
            )
        )
    return results


class _NoRow:
    output: dict[str, Any] = {}


_NO_ROW = _NoRow()


def block_ledger_connections(ledger: Ledger, seconds: float) -> None:
    """The ledger's database refuses every connection for ``seconds`` and drops the live ones: a
    blip (a restart, a failover) as a runner sees it."""
    import psycopg

    name = ledger._engine.url.database
    admin = ledger._engine.url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            time.sleep(seconds)
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def ledger_blips(
    sim: Sim, ledger: Ledger, settings: Settings, count: int, *, seconds: float = 0.5
) -> list[CaseResult]:
    """A sub-second loss of the ledger while each saga polls its snapshot action: the runner rides
    it out. Expected: the *first* advance completes, one snapshot, no compensation at all."""
    results = []
    for i in range(count):
        started = time.monotonic()
        sim.reset()
        sim.control.post("/_sim/config", json={"action_seconds": 100}).raise_for_status()  # 2 s wall
        droplet = seed(sim, f"blip-{i}")
        saga, _ = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": droplet}))
        outcome: list[str] = []

        def run(saga_id: uuid.UUID = saga.id, outcome: list[str] = outcome) -> None:
            services = Services(settings)
            try:
                outcome.append(Runner(ledger, catalog(), services).advance(saga_id).status.value)
            except BaseException as exc:
                outcome.append(f"raised {type(exc).__name__}: {exc}")
            finally:
                services.close()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        problems = []
        try:
            wait_for(
                lambda saga_id=saga.id: "action_id" in steps_of(ledger, saga_id).get(0, _NO_ROW).output,
                15,
                "the snapshot action to be recorded",
            )
            block_ledger_connections(ledger, seconds)
        except (TimeoutError, LedgerError) as exc:
            problems.append(f"harness: {exc}")
        worker.join(60)
        if outcome != ["completed"]:
            problems.append(f"the runner's advance ended {outcome or ['hung']}, want completed")
        rows = list(steps_of(ledger, saga.id).values())
        undone = [r.step_name for r in rows if r.compensation_attempts]
        if undone:
            problems.append(f"compensated {undone}: a blip is not a failure")
        name = f"arcadia-snap-{droplet}-{saga.id.hex[:8]}"
        live = [s["name"] for s in sim.state()["snapshots"] if not s.get("deleted")]
        if live != [name]:
            problems.append(f"live snapshots {live}, want [{name}]")
        results.append(
            CaseResult(
                f"ledger blip {seconds}s mid-poll #{i}",
                Verdict(not problems, leaked=max(len(live) - 1, 0), detail="; ".join(problems)),
                time.monotonic() - started,
            )
        )
    return results
