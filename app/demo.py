"""The demo: the seed's live smoke, replayed against a simulator started here.

1. ``[create_droplet_snapshot, fail]``: a real snapshot in the simulator, a failing step, the
   rollback: ``rolled_back`` with ``create_droplet_snapshot: compensated, fail: failed`` and zero
   snapshots left.
2. A plain snapshot saga that completes and leaves exactly one snapshot.

It uses whatever ledger the settings choose (the embedded Postgres when SAGAS_DATABASE_URL is
unset) and talks to the simulator with a throwaway token, never a real one.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

DEMO_TOKEN = "demo-token-not-a-secret"


def _environment(base_url: str) -> None:
    os.environ["SAGAS_DO_API_URL"] = base_url
    os.environ["SAGAS_DO_TOKEN"] = DEMO_TOKEN
    os.environ.pop("SAGAS_DO_TOKEN_PROVISIONING", None)
    os.environ.setdefault("SAGAS_POLL_INITIAL_SECONDS", "0.2")
    os.environ.setdefault("SAGAS_POLL_MAX_SECONDS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def run_demo(out: Console) -> int:
    from app.prefect_server import prefect_api
    from app.running import run_flow
    from app.wiring import build_app
    from sagas.digitalocean.simulator import SimulatorConfig, run_simulator_in_thread
    from sagas.progress import SagaProgress

    config = SimulatorConfig(time_scale=0.5)  # a 2 s snapshot action takes 1 s: long enough to watch
    with run_simulator_in_thread(config) as sim:
        _environment(sim.base_url)
        # The temporary Prefect server boots while the simulator is seeded and the ledger opened.
        with prefect_api() as api:
            control = httpx.Client(base_url=sim.base_url, timeout=10)
            droplet = control.post("/_sim/droplets", json={"name": "demo-web-1", "tags": ["demo"]}).json()
            droplet_id = int(droplet["droplet"]["id"] if "droplet" in droplet else droplet["id"])
            out.print(f"simulator at {sim.base_url}, droplet {droplet_id}")
            application = build_app()
            ledger = application.ledger
            ok = True
            api.ready()

            out.rule(escape("1. the seed's smoke: [create_droplet_snapshot, fail]"))
            smoke_id = uuid.uuid4()
            with SagaProgress(ledger, smoke_id, out, live=out.is_terminal):
                smoke = run_flow(
                    application,
                    "test",
                    {"droplet_id": droplet_id},
                    ["create_droplet_snapshot", "fail"],
                    smoke_id,
                    "demo",
                    errors_to=out,
                ).saga
            smoke_steps = {s.step_name: s.status.value for s in ledger.list_step_results(smoke.id)}
            left = _snapshots(control)
            _print_ledger(out, smoke, ledger)
            out.print(f"snapshots left in the simulator: {len(left)}")
            ok &= smoke.status.value == "rolled_back" and not left
            ok &= smoke_steps == {"create_droplet_snapshot": "compensated", "fail": "failed"}

            out.rule("2. a snapshot saga that completes")
            plain_id = uuid.uuid4()
            with SagaProgress(ledger, plain_id, out, live=out.is_terminal):
                plain = run_flow(
                    application,
                    "snapshot",
                    {"droplet_id": droplet_id},
                    ["create_droplet_snapshot"],
                    plain_id,
                    "demo",
                    errors_to=out,
                ).saga
            left = _snapshots(control)
            _print_ledger(out, plain, ledger)
            out.print(f"snapshots in the simulator: {[s['name'] for s in left]}")
            ok &= plain.status.value == "completed" and len(left) == 1
            control.close()
            for saga in (smoke, plain):
                path = _write_timeline(ledger, saga)
                out.print(f"timeline of the {saga.kind} saga ({saga.status.value}): {path}", markup=False)
    out.rule("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def _write_timeline(ledger: Any, saga: Any) -> Path:
    from sagas.settings import load_settings
    from sagas.timeline import render_svg

    folder = load_settings().home / "timelines"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"saga-{saga.id}.svg"
    path.write_text(render_svg(saga, ledger.list_step_results(saga.id)))
    return path


def _snapshots(control: httpx.Client) -> list[dict[str, Any]]:
    state = control.get("/_sim/state").json()
    return [s for s in state["snapshots"] if not s.get("deleted")]


def _print_ledger(out: Console, saga: Any, ledger: Any) -> None:
    from sagas.outcome import outcome_line

    steps = ledger.list_step_results(saga.id)
    out.print(outcome_line(saga, steps), markup=False)
    for step in steps:
        out.print(
            f"  {step.step_name}: {step.status.value}  key={step.idempotency_key}"
            f"  output={json.dumps(step.output, sort_keys=True)}",
            markup=False,
        )
