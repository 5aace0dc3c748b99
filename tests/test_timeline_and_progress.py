"""A saga's picture (SVG timeline) and its live progress, from real sagas run on the simulator."""

from __future__ import annotations

import io
import threading
import xml.etree.ElementTree as ET
from typing import Any

import httpx
from rich.console import Console

from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.progress import SagaProgress
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from sagas.timeline import render_svg
from tasks.registry import catalog
from tests.conftest import run_saga, seed_droplet

SVG = "{http://www.w3.org/2000/svg}"


def bars(svg: str) -> list[tuple[str, str]]:
    root = ET.fromstring(svg)
    return [
        (r.get("class", ""), r.findtext(f"{SVG}title") or "")
        for r in root.iter(f"{SVG}rect")
        if r.get("class")
    ]


def test_timeline_of_a_completed_saga_shows_the_wait_on_the_provider(
    sim: httpx.Client, ledger: Ledger, settings: Settings, tmp_path: Any
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 110})  # 2.2 s: the provider counts whole seconds
    saga = run_saga(ledger, settings, "snapshot", {"droplet_id": seed_droplet(sim)})
    assert saga.status is SagaStatus.COMPLETED
    svg = render_svg(saga, ledger.list_step_results(saga.id))
    kinds = [kind for kind, _ in bars(svg)]
    assert kinds == ["completed", "wait"]
    assert "create_droplet_snapshot: waiting on the provider" in svg
    assert f"snapshot saga {saga.id}: completed" in svg
    (tmp_path / "completed.svg").write_text(svg)


def test_timeline_of_a_rolled_back_saga_shows_failure_and_undo(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 110})  # 2.2 s: the provider counts whole seconds
    saga = run_saga(
        ledger, settings, "test", {"droplet_id": seed_droplet(sim)}, ["create_droplet_snapshot", "fail"]
    )
    assert saga.status is SagaStatus.ROLLED_BACK
    svg = render_svg(saga, ledger.list_step_results(saga.id))
    drawn = bars(svg)
    # The fail step sent nothing, so there was nothing to undo: no undo bar for it.
    assert [k for k, _ in drawn] == ["completed", "wait", "compensated", "failed"]
    assert any(t.startswith("fail: execute failed") for _, t in drawn)
    assert any(t.startswith("create_droplet_snapshot: undo compensated") for _, t in drawn)


def test_plain_progress_prints_a_line_per_change(
    sim: httpx.Client, ledger: Ledger, settings: Settings
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 60})  # 1.2 s of polling to watch
    saga, _ = ledger.create_saga(
        catalog().new_saga(
            "test", {"droplet_id": seed_droplet(sim)}, steps=["create_droplet_snapshot", "fail"]
        )
    )
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    services = Services(settings)
    with SagaProgress(ledger, saga.id, console, live=False, interval=0.05):
        worker = threading.Thread(target=lambda: Runner(ledger, catalog(), services).advance(saga.id))
        worker.start()
        worker.join(60)
    services.close()
    lines = out.getvalue().splitlines()
    assert "\x1b[" not in out.getvalue()  # no terminal codes in a log
    assert any("0. create_droplet_snapshot: polling action" in line for line in lines)
    assert any("0. create_droplet_snapshot: compensated" in line for line in lines)
    assert lines[-1].endswith("failed, undone") or any(line.endswith(": rolled_back") for line in lines)
    assert len(lines) == len(set(lines))  # a line per change, not per tick
