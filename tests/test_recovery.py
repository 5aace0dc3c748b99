"""The recovery sweep finishes sagas whose runner died; it leaves held and fresh sagas alone."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text

from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.recovery import sweep
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import live_snapshots, seed_droplet


def make_runner(ledger: Ledger, settings: Settings) -> Runner:
    return Runner(ledger, catalog(), Services(settings))


def abandon(ledger: Ledger, saga_id: uuid.UUID, status: str) -> None:
    """Leave the saga as a runner killed mid-way would: claimed, then its lease run out."""
    lease = ledger.claim(saga_id, 30)
    with ledger._engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE saga_runs SET status = :s, lease_expires_at = now() - interval '1 second' WHERE id = :id"
            ),
            {"s": status, "id": saga_id},
        )
    assert lease.saga_id == saga_id


def test_sweep_finishes_dead_runners_sagas_and_skips_the_rest(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    forward = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": seed_droplet(sim, "a")}))[0].id
    abandon(ledger, forward, "running")
    backward = ledger.create_saga(
        catalog().new_saga(
            "test", {"droplet_id": seed_droplet(sim, "b")}, steps=["create_droplet_snapshot", "fail"]
        )
    )[0].id
    abandon(ledger, backward, "compensating")
    held = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": seed_droplet(sim, "c")}))[0].id
    ledger.claim(held, 60)  # a live runner holds this one
    fresh = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": seed_droplet(sim, "d")}))[0].id

    report = sweep(ledger, lambda: make_runner(ledger, settings), pending_grace_seconds=300)
    assert report.finished == {str(forward): "completed", str(backward): "rolled_back"}
    assert report.errors == {}
    assert ledger.get_saga(held).status is SagaStatus.PENDING
    assert ledger.get_saga(fresh).status is SagaStatus.PENDING  # its own flow run may be queued
    assert len(live_snapshots(sim)) == 1  # the forward saga's; the rolled-back one left nothing

    # Running it again is harmless: nothing is left for it but the fresh saga, once it is stale.
    again = sweep(ledger, lambda: make_runner(ledger, settings), pending_grace_seconds=0)
    assert again.finished == {str(fresh): "completed"}
    assert ledger.get_saga(held).status is SagaStatus.PENDING


def test_example_automation_matches_the_event_sagas_emit() -> None:
    from pathlib import Path

    import yaml
    from prefect.events.schemas.automations import AutomationCore

    from flows.visibility import EVENT_PREFIX

    spec = yaml.safe_load(
        (Path(__file__).parent.parent / "deployments/automations/compensation-failed.yaml").read_text()
    )
    automation = AutomationCore.model_validate(spec)
    assert automation.trigger.expect == {f"{EVENT_PREFIX}.compensation_failed"}  # type: ignore[union-attr]
    assert automation.actions[0].type == "send-notification"
