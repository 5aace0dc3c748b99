"""The caps on destructive sagas running at once (offboard, rollback, update), kept by the database.

Over the cap a saga is refused with exit 3 and nothing written, as a busy droplet is; with
``sagas run --wait`` it waits, recorded in the ledger and shown by ``sagas show``; a saga waiting
for a person's approval holds no place and takes one again to go on. Two processes racing to
start destructive sagas never exceed the cap (``tests/admission_racer.py``). Flows that wait are
in tests/test_cli_and_flows.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from app.cli import cli as app
from sagas.context import Provisioning
from sagas.errors import DestructiveCapError
from sagas.ledger.store import Ledger
from sagas.models import Admission, ApprovalDecision, DestructiveCaps, SagaStatus
from sagas.recovery import sweep
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings, load_settings
from tasks.registry import catalog
from tests.conftest import MECHANICS, REPO, advance_saga, seed_droplet
from tests.test_kinds import prepare

cli = CliRunner()
RESIZE = {"size": "s-2vcpu-2gb"}


def rows(ledger: Ledger) -> tuple[int, int]:
    with ledger._engine.connect() as conn:
        sagas = conn.execute(text("SELECT count(*) FROM saga_runs")).scalar_one()
        locks = conn.execute(text("SELECT count(*) FROM saga_resource_locks")).scalar_one()
    return sagas, locks


def places_held(ledger: Ledger) -> int:
    with ledger._engine.connect() as conn:
        held: int = conn.execute(
            text(
                "SELECT count(*) FROM saga_runs WHERE destructive AND admitted_at IS NOT NULL"
                " AND status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
            )
        ).scalar_one()
    return held


def provisioning(ledger: Ledger, per_account: int = 1, per_deployment: int = 1) -> Provisioning:
    return Provisioning(ledger, catalog(), caps=DestructiveCaps(per_account, per_deployment))


def test_the_destructive_kinds_are_offboard_rollback_and_update_and_a_saga_running_a_pivot() -> None:
    kinds = catalog()
    assert sorted(k for k in kinds.kind_names if kinds.kind(k).destructive) == [
        "offboard",
        "rollback",
        "update",
    ]
    deleting = kinds.new_saga("test", {"droplet_id": 7}, steps=["delete_droplet"])
    snapshotting = kinds.new_saga("test", {"droplet_id": 7}, steps=["create_droplet_snapshot"])
    assert deleting.destructive and not snapshotting.destructive


def test_over_the_account_cap_a_destructive_saga_is_refused_and_nothing_is_written(ledger: Ledger) -> None:
    caps = provisioning(ledger)
    holder = caps.create_saga("update", {"droplet_id": 1, **RESIZE})
    assert holder.admitted_at is not None
    with pytest.raises(
        DestructiveCapError, match="SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT allows \\(1\\)"
    ) as refused:
        caps.create_saga("offboard", {"droplet_id": 2})
    assert not refused.value.recorded and "nothing was written" in str(refused.value)
    assert rows(ledger) == (1, 1)  # the holder and its droplet lock, nothing of the refused one
    # Work that destroys nothing is never capped.
    caps.create_saga("snapshot", {"droplet_id": 3})
    assert rows(ledger) == (2, 2)


def test_the_deployment_cap_counts_only_that_customers_destructive_sagas(ledger: Ledger) -> None:
    caps = provisioning(ledger, per_account=10, per_deployment=2)
    for droplet in (1, 2):
        caps.create_saga("update", {"droplet_id": droplet, **RESIZE}, deployment_id="acme")
    with pytest.raises(DestructiveCapError, match="customer deployment acme") as refused:
        caps.create_saga("update", {"droplet_id": 3, **RESIZE}, deployment_id="acme")
    assert "SAGAS_MAX_DESTRUCTIVE_PER_DEPLOYMENT allows (2)" in str(refused.value)
    caps.create_saga("update", {"droplet_id": 4, **RESIZE}, deployment_id="globex")
    caps.create_saga("update", {"droplet_id": 5, **RESIZE})
    assert places_held(ledger) == 4


def test_waiting_is_recorded_with_the_reason_and_a_place_that_frees_admits_it(ledger: Ledger) -> None:
    caps = provisioning(ledger)
    holder = caps.create_saga("update", {"droplet_id": 1, **RESIZE})
    waiting = caps.create_saga("rollback", {"droplet_id": 2, "snapshot_id": 9}, admission=Admission.WAIT)
    assert waiting.waiting_for_admission and waiting.admitted_at is None
    assert "1 destructive sagas" in (waiting.waiting_reason or "")
    assert ledger.admit(waiting.id, caps.caps or DestructiveCaps(1, 1)).admitted_at is None  # still full
    with ledger._engine.begin() as conn:  # the holder finished
        conn.execute(text("UPDATE saga_runs SET status = 'completed' WHERE id = :id"), {"id": holder.id})
    admitted = ledger.admit(waiting.id, DestructiveCaps(1, 1))
    assert admitted.admitted_at is not None and admitted.waiting_reason is None
    assert admitted.waiting_since == waiting.waiting_since  # when it began to wait stays on record


def test_the_cli_refuses_a_destructive_saga_over_the_cap_with_exit_3_and_writes_nothing(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT", "1")
    provisioning(ledger).create_saga("update", {"droplet_id": 1, **RESIZE})
    before = rows(ledger)
    result = cli.invoke(app, ["run", "offboard", "--inputs", json.dumps({"droplet_id": 2})])
    assert result.exit_code == 3, result.output
    assert "refused: 1 destructive sagas" in result.output and "nothing was written" in result.output
    assert rows(ledger) == before


def test_sagas_run_wait_records_the_wait_shows_it_and_cancels_the_saga_when_it_gives_up(
    ledger: Ledger, sim: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT", "1")
    provisioning(ledger).create_saga("update", {"droplet_id": 1, **RESIZE})
    droplet = seed_droplet(sim)
    saga_id = str(uuid.uuid4())
    waiter = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "offboard", "--inputs", json.dumps({"droplet_id": droplet}),
         "--saga-id", saga_id, "--wait", "4"],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (found := ledger.get_sagas([uuid.UUID(saga_id)])) == {}:
            assert time.monotonic() < deadline and waiter.poll() is None, waiter.communicate()
            time.sleep(0.05)
        saga = found[uuid.UUID(saga_id)]
        assert saga.status is SagaStatus.PENDING and saga.waiting_for_admission
        shown = cli.invoke(app, ["show", saga_id])
        assert shown.exit_code == 0, shown.output
        assert "waiting" in shown.output and "SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT" in shown.output
        listed = cli.invoke(app, ["list"])
        assert "pending (waiting)" in listed.output
        _out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 3, err
    assert f"saga {saga_id} waited 4s to start and was cancelled (nothing ran)" in err
    gave_up = ledger.get_saga(uuid.UUID(saga_id))
    assert gave_up.status is SagaStatus.ROLLED_BACK and "gave up after waiting 4s" in (gave_up.error or "")
    assert ledger.list_step_results(gave_up.id) == []  # nothing ran
    assert ledger.resource_holder(f"droplet:{droplet}") is None


def test_a_saga_awaiting_approval_holds_no_place_and_takes_one_again_to_go_on(
    ledger: Ledger, sim: httpx.Client, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT", "1")
    settings = load_settings()
    capped = Provisioning(ledger, catalog(), caps=settings.destructive_caps)

    def advance(saga_id: uuid.UUID) -> Any:
        return advance_saga(ledger, settings, saga_id)

    offboard = capped.create_saga("offboard", prepare("offboard", sim, api))
    asked = advance(offboard.id)
    assert asked.status is SagaStatus.AWAITING_APPROVAL and asked.admitted_at is None
    # While a person decides, the place is free for another destructive saga.
    update = capped.create_saga(
        "update", {"droplet_id": seed_droplet(sim, "web-2"), **RESIZE}, options=MECHANICS
    )
    assert update.admitted_at is not None
    approved = cli.invoke(app, ["approve", str(offboard.id), "--note", "customer left"])
    assert approved.exit_code == 3, approved.output
    assert (
        f"saga {offboard.id} is approved (recorded) but waits to start: 1 destructive sagas"
        in approved.output
    )
    waiting = ledger.get_saga(offboard.id)
    assert waiting.approval_decision is ApprovalDecision.APPROVED
    assert waiting.status is SagaStatus.AWAITING_APPROVAL and waiting.waiting_for_admission
    assert waiting.lease_owner is None  # released for whoever tries next
    with pytest.raises(DestructiveCapError) as still:
        advance(offboard.id)
    assert still.value.recorded
    assert advance(update.id).status is SagaStatus.COMPLETED
    assert advance(offboard.id).status is SagaStatus.COMPLETED
    assert places_held(ledger) == 0


def test_the_sweep_leaves_a_waiting_saga_waiting_and_queued_sagas_to_their_workers(
    ledger: Ledger, settings: Settings
) -> None:
    settings = settings.model_copy(update={"max_destructive_per_account": 1})
    capped = Provisioning(ledger, catalog(), caps=settings.destructive_caps)
    capped.create_saga("update", {"droplet_id": 1, **RESIZE})
    stale = capped.create_saga("update", {"droplet_id": 2, **RESIZE}, admission=Admission.WAIT)
    queued = capped.create_saga("snapshot", {"droplet_id": 3}, queue="fleet")
    with ledger._engine.begin() as conn:  # both older than the grace; nobody asked for a while
        conn.execute(
            text(
                "UPDATE saga_runs SET created_at = now() - interval '1 hour',"
                " waiting_checked_at = now() - interval '1 hour' WHERE id IN (:a, :b)"
            ),
            {"a": stale.id, "b": queued.id},
        )
    assert queued.id not in ledger.list_recoverable(pending_grace_seconds=60)

    def runner() -> Runner:
        return Runner(ledger, catalog(), Services(settings))

    report = sweep(ledger, runner, pending_grace_seconds=60)
    assert report.waiting == {str(stale.id): ledger.get_saga(stale.id).waiting_reason}
    assert ledger.get_saga(stale.id).status is SagaStatus.PENDING
    assert ledger.get_saga(queued.id).status is SagaStatus.PENDING


# -- processes racing -----------------------------------------------------------------------------


@pytest.fixture
def racers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def race(
    started: list[subprocess.Popen[str]], env: dict[str, str], *commands: list[str]
) -> list[dict[str, int]]:
    for args in commands:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.admission_racer", *args],
            cwd=REPO, env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), (line, proc.stderr.read() if proc.stderr else "")
        started.append(proc)
    start_at = f"{time.time() + 0.5}\n"
    for proc in started:
        assert proc.stdin is not None
        proc.stdin.write(start_at)
        proc.stdin.flush()
    results = []
    for proc in started:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_racing_to_record_destructive_sagas_never_exceed_the_cap(
    ledger: Ledger, env: dict[str, str], racers: list[subprocess.Popen[str]]
) -> None:
    caps = {"SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT": "5", "SAGAS_MAX_DESTRUCTIVE_PER_DEPLOYMENT": "3"}
    first, second, third = race(
        racers,
        caps,
        ["refuse", "--first", "1000", "--count", "40"],
        ["refuse", "--first", "2000", "--count", "40"],
        ["refuse", "--first", "3000", "--count", "40", "--deployment", "acme"],
    )
    assert first["taken"] + second["taken"] + third["taken"] == 5
    assert third["taken"] <= 3
    assert first["refused"] + second["refused"] + third["refused"] == 115
    assert rows(ledger) == (5, 5)  # every refusal wrote nothing
    assert places_held(ledger) == 5


def test_two_processes_racing_to_admit_waiting_sagas_never_exceed_the_cap(
    ledger: Ledger, env: dict[str, str], racers: list[subprocess.Popen[str]]
) -> None:
    full = provisioning(ledger, per_account=1)
    holder = full.create_saga("update", {"droplet_id": 1, **RESIZE})
    waiting = [
        full.create_saga("update", {"droplet_id": 100 + i, **RESIZE}, admission=Admission.WAIT).id
        for i in range(40)
    ]
    with ledger._engine.begin() as conn:  # the holder finished: five places free at once
        conn.execute(text("UPDATE saga_runs SET status = 'completed' WHERE id = :id"), {"id": holder.id})
    ids = ",".join(map(str, waiting))
    race(
        racers,
        {"SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT": "5"},
        ["admit", "--sagas", ids],
        ["admit", "--sagas", ids],
    )
    assert places_held(ledger) == 5
    still = [s for s in ledger.get_sagas(waiting).values() if s.waiting_for_admission]
    assert len(still) == 35
