"""The CLI and the Prefect flows, end to end: real Prefect (the test harness), real Postgres, the simulator."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from sagas.ledger.store import Ledger
from tasks.registry import catalog
from tests.conftest import REPO, TOKEN, live_snapshots, run_cli, seed_droplet
from tests.test_kinds import FIXED_KINDS, prepare


def count_rows(ledger: Ledger) -> tuple[int, int]:
    with ledger._engine.connect() as conn:
        sagas = conn.execute(text("SELECT count(*) FROM saga_runs")).scalar_one()
        steps = conn.execute(text("SELECT count(*) FROM saga_step_results")).scalar_one()
    return sagas, steps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "provisionn", "--inputs", "{}"], "unknown saga kind 'provisionn'"),
        (
            ["run", "test", "--steps", "create_droplet_snapshot,os.system", "--inputs", '{"droplet_id": 1}'],
            "unknown step 'os.system'",
        ),
        (["run", "snapshot", "--inputs", '{"droplet_id": "abc"}'], "droplet_id"),
        (["run", "snapshot", "--inputs", '{"droplet_id": -4}'], "droplet_id"),
        (["run", "snapshot", "--inputs", '{"droplet_id": 1, "surprise": 2}'], "surprise"),
        (["run", "snapshot", "--inputs", '{"droplet_id": 1'], "not valid JSON"),
        (["run", "snapshot", "--inputs", "[1, 2]"], "JSON object"),
        (["run", "snapshot", "--inputs", '{"droplet_id": 1}', "--saga-id", "not-a-uuid"], "not a saga id"),
        (["show", "not-a-uuid"], "not a saga id"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(ledger: Ledger, args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert count_rows(ledger) == (0, 0)


def test_unknown_saga_id_exits_4(ledger: Ledger) -> None:
    for command in ("show", "resume", "cancel"):
        result = run_cli(command, str(uuid.uuid4()))
        assert result.exit_code == 4, result.output
        assert "no saga with id" in result.output


def test_seed_smoke_through_prefect(
    prefect_api: str, sim: httpx.Client, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    droplet = seed_droplet(sim)
    result = run_cli(
        "run",
        "test",
        "--steps",
        "create_droplet_snapshot,fail",
        "--inputs",
        json.dumps({"droplet_id": droplet}),
        "--json",
    )
    assert result.exit_code == 1, result.output
    shown = json.loads(result.stdout[result.stdout.index("{") :])
    assert shown["status"] == "rolled_back"
    assert [(s["name"], s["status"]) for s in shown["steps"]] == [
        ("create_droplet_snapshot", "compensated"),
        ("fail", "failed"),
    ]
    assert live_snapshots(sim) == []
    # Progress went to stderr as plain lines (not a terminal), one per change the reader saw (it
    # samples the ledger twice a second: a state shorter than that may pass unseen), ending with
    # the step's last state.
    seen = [
        line.strip() for line in result.stderr.splitlines() if line.strip().startswith("0. create_droplet")
    ]
    assert seen and seen[-1] == "0. create_droplet_snapshot: compensated", result.stderr
    assert len(seen) == len(set(seen))  # a line per change, not per tick
    assert "\x1b[" not in result.stderr
    # Each step's execute and compensate ran as its own Prefect task run.
    names = _task_run_names(shown["flow_run_id"])
    assert {
        "create_droplet_snapshot.execute[0]",
        "fail.execute[1]",
        "create_droplet_snapshot.compensate[0]",
    } <= names

    # The token reached neither the logs nor the ledger.
    assert TOKEN not in caplog.text
    assert TOKEN not in _ledger_dump(ledger)


def test_snapshot_run_completes_and_list_show_agree(
    prefect_api: str, sim: httpx.Client, ledger: Ledger, tmp_path: Path
) -> None:
    droplet = seed_droplet(sim)
    saga_id = str(uuid.uuid4())
    result = run_cli("run", "snapshot", "--inputs", json.dumps({"droplet_id": droplet}), "--saga-id", saga_id)
    assert result.exit_code == 0, result.output
    assert saga_id in result.output and "completed" in result.output
    assert len(live_snapshots(sim)) == 1

    again = run_cli("run", "snapshot", "--inputs", json.dumps({"droplet_id": droplet}), "--saga-id", saga_id)
    assert again.exit_code == 0, again.output  # the same id: the same saga, nothing redone
    assert len(live_snapshots(sim)) == 1
    assert count_rows(ledger) == (1, 1)

    svg_path = Path(
        run_cli("show", saga_id, "--timeline", "--output", str(tmp_path / "t.svg")).stdout.strip()
    )
    assert svg_path.read_text().startswith("<svg") and "create_droplet_snapshot" in svg_path.read_text()
    listed = json.loads(run_cli("list", "--kind", "snapshot", "--status", "completed", "--json").stdout)
    assert [s["id"] for s in listed] == [saga_id]
    shown = json.loads(run_cli("show", saga_id, "--json").stdout)
    assert shown["status"] == "completed"
    assert shown["steps"][0]["name"] == "create_droplet_snapshot"
    assert shown["steps"][0]["status"] == "completed"
    assert shown["steps"][0]["idempotency_key"] == f"arcadia-snap-{droplet}-{saga_id.replace('-', '')[:8]}"


def test_two_cli_runs_of_one_saga_make_one_saga_and_the_second_follows_the_first(
    prefect_api: str, sim: httpx.Client, ledger: Ledger
) -> None:
    sim.post("/_sim/config", json={"action_seconds": 250})  # 5 s: long enough for both to start
    droplet = seed_droplet(sim)
    saga_id = str(uuid.uuid4())
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    args = [
        sys.executable,
        "-m",
        "app.cli",
        "run",
        "snapshot",
        "--inputs",
        json.dumps({"droplet_id": droplet}),
    ]
    procs = [
        subprocess.Popen(
            [*args, "--saga-id", saga_id],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 0], outcomes  # a harmless duplicate is not an error
    followed = [
        out + err for _, out, err in outcomes if "this run was a second submission and followed it" in err
    ]
    assert len(followed) == 1, outcomes  # one drove it, the other says it followed
    assert ledger.get_saga(uuid.UUID(saga_id)).status.value == "completed"
    assert len(live_snapshots(sim)) == 1
    assert count_rows(ledger) == (1, 1)


def _task_run_names(flow_run_id: str) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
        )
    return {r.name for r in runs}


def _ledger_dump(ledger: Ledger) -> str:
    with ledger._engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT row_to_json(s)::text FROM saga_runs s UNION ALL SELECT row_to_json(r)::text FROM saga_step_results r"
            )
        )
        return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("kind", FIXED_KINDS)
def test_sagas_run_works_for_every_kind(
    kind: str, prefect_api: str, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    inputs = prepare(kind, sim, api)
    # Straight through: the approval gate of offboard and rollback is tests/test_approval.py's.
    result = run_cli("run", kind, "--inputs", json.dumps(inputs), "--json", "--no-require-approval")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout[result.stdout.index("{") :])
    assert shown["status"] == "completed"
    assert [s["name"] for s in shown["steps"]] == list(catalog().kind(kind).steps or ())


def test_one_saga_per_droplet_across_processes(prefect_api: str, sim: httpx.Client, ledger: Ledger) -> None:
    sim.post("/_sim/config", json={"action_seconds": 200})  # 4 s actions: the first holds the droplet
    droplet = seed_droplet(sim)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    base = [
        sys.executable,
        "-m",
        "app.cli",
        "run",
        "suspend",
        "--inputs",
        json.dumps({"droplet_id": droplet}),
    ]

    def start(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*base, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = start()
    holder = _wait_for_holder(ledger, f"droplet:{droplet}")
    refused = start()
    waiting = start("--wait", "120")
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 3, out + err
    assert f"droplet:{droplet} is held by saga {holder}" in err
    for proc in (first, waiting):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, out + err
    assert count_rows(ledger)[0] == 2  # the refused run wrote nothing
    assert ledger.resource_holder(f"droplet:{droplet}") is None


def _wait_for_holder(ledger: Ledger, resource: str) -> uuid.UUID:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        holder = ledger.resource_holder(resource)
        if holder is not None:
            return holder
        time.sleep(0.1)
    raise AssertionError(f"nobody took {resource}")


def test_fleet_snapshot_queues_one_saga_per_droplet_for_a_worker_inside_the_rate_limit(
    prefect_api: str, sim: httpx.Client, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The simulator enforces 40 requests a "minute" and runs 50x fast (a minute is 1.2 s);
    # the client's shared budget is told the same, so 8 concurrent sagas must pace themselves.
    sim.post("/_sim/config", json={"rate_limit_per_minute": 40, "time_scale": 0.02}).raise_for_status()
    monkeypatch.setenv("SAGAS_DO_RATE_LIMIT_PER_MINUTE", "40")
    monkeypatch.setenv("SAGAS_DO_RATE_WINDOW_SCALE", "0.02")
    droplets = [
        sim.post("/_sim/droplets", json={"name": f"fleet-{i}", "tags": ["fleet"]}).json()["droplet"]["id"]
        for i in range(8)
    ]
    seed_droplet(sim, "not-in-the-fleet")
    from app.wiring import build_app
    from flows.fleet import fleet_snapshot
    from sagas.worker import QueueWorker

    # The flow runs no saga itself: a worker (here a thread of this process) runs the queue.
    application = build_app()
    worker = QueueWorker(
        application.ledger, application.runner, queue="fleet", concurrency=8, poll_seconds=0.1
    )
    working = threading.Thread(target=worker.run, daemon=True)
    working.start()
    try:
        result = fleet_snapshot(tag="fleet")
    finally:
        worker.stop()
        working.join(30)
    assert result == {"droplets": 8, "outcomes": {"completed": 8}}
    assert worker.report.settled == {"completed": 8}
    assert {s.queue for s in ledger.list_sagas()} == {"fleet"}
    counters = sim.get("/_sim/state").json()["counters"]
    assert counters["responses_429"] == 0
    names = sorted(s["name"] for s in live_snapshots(sim))
    assert len(names) == 8 and all(n.endswith("-nightly") for n in names)
    with httpx.Client(base_url=prefect_api, timeout=10) as prefect:
        [progress] = prefect.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": ["fleet-progress-fleet"]}}}
        ).json()
        [table] = prefect.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": ["fleet-snapshot-fleet"]}}}
        ).json()
    assert progress["type"] == "progress" and progress["data"] == 100.0
    assert progress["description"] == "8 done, 0 rolled back, 0 failed, 0 running, 0 waiting, of 8 droplets"
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [row["status"] for row in rows] == ["completed"] * 8
    assert {int(n.split("-")[2]) for n in names} == set(droplets)


def test_saga_runs_publish_an_artifact_and_a_terminal_event(
    prefect_api: str, sim: httpx.Client, ledger: Ledger
) -> None:
    droplet = seed_droplet(sim)
    saga_id = str(uuid.uuid4())
    result = run_cli("run", "snapshot", "--inputs", json.dumps({"droplet_id": droplet}), "--saga-id", saga_id)
    assert result.exit_code == 0, result.output
    with httpx.Client(base_url=prefect_api, timeout=10) as prefect:
        artifacts = prefect.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": [f"saga-{saga_id}"]}}}
        ).json()
        assert len(artifacts) == 1
        table = json.dumps(artifacts[0]["data"])
        assert "create_droplet_snapshot" in table and "completed" in table
        assert TOKEN not in table
        events = _wait_for_events(prefect, f"arcadia.saga.{saga_id}")
    assert [e["event"] for e in events] == ["arcadia.saga.completed"]


def _wait_for_events(prefect: httpx.Client, resource_id: str) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page = prefect.post(
            "/events/filter",
            json={
                "filter": {"resource": {"id": [resource_id]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}
            },
        ).json()
        if page.get("events"):
            return list(page["events"])
        time.sleep(0.5)
    raise AssertionError(f"no event for {resource_id}")


def test_tokens_come_from_a_prefect_secret_block(
    prefect_api: str, sim: httpx.Client, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from app.wiring import secret_block_token
    from sagas.errors import ConfigurationError
    from sagas.settings import TokenPurpose, load_settings

    block_token = "dop_v1_block" + uuid.uuid4().hex
    Secret(value=block_token).save("arcadia-do-provisioning", overwrite=True)
    monkeypatch.setenv("SAGAS_DO_TOKEN_PROVISIONING_BLOCK", "arcadia-do-provisioning")
    token = secret_block_token(load_settings(), TokenPurpose.PROVISIONING)
    assert token is not None and token.get_secret_value() == block_token
    assert secret_block_token(load_settings(), TokenPurpose.READ) is None  # no block named: the environment

    droplet = seed_droplet(sim)
    result = run_cli("run", "snapshot", "--inputs", json.dumps({"droplet_id": droplet}), "--json")
    assert result.exit_code == 0, result.output
    assert block_token not in result.output and block_token not in _ledger_dump(ledger)

    monkeypatch.setenv("SAGAS_DO_TOKEN_PROVISIONING_BLOCK", "no-such-block")
    with pytest.raises(ConfigurationError, match="no-such-block"):
        secret_block_token(load_settings(), TokenPurpose.PROVISIONING)

    # A token pasted into the block with curly quotes is refused by the block's name, not quoted.
    Secret(value=f"\u201c{block_token}\u201d").save("arcadia-do-quoted", overwrite=True)
    monkeypatch.setenv("SAGAS_DO_TOKEN_PROVISIONING_BLOCK", "arcadia-do-quoted")
    with pytest.raises(ConfigurationError, match="Prefect Secret block 'arcadia-do-quoted'") as caught:
        secret_block_token(load_settings(), TokenPurpose.PROVISIONING)
    assert block_token not in f"{caught.value} {caught.value!r}"


def test_sagas_run_of_an_offboard_stops_awaiting_approval_with_exit_6_and_the_command_that_approves(
    prefect_api: str, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    inputs = prepare("offboard", sim, api)
    result = run_cli("run", "offboard", "--inputs", json.dumps(inputs))
    assert result.exit_code == 6, result.output
    [saga] = ledger.list_sagas()
    assert saga.status.value == "awaiting_approval"
    assert f"sagas approve {saga.id} --note" in result.output  # the flow run's last word says how
    approved = run_cli("approve", str(saga.id), "--note", "go ahead")
    assert approved.exit_code == 0, approved.output
    assert ledger.get_saga(saga.id).status.value == "completed"


def _hold_the_only_place(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> uuid.UUID:
    """One destructive saga may run at once, and one holds the place (pending, never run)."""
    from sagas.context import Provisioning
    from sagas.models import DestructiveCaps

    monkeypatch.setenv("SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT", "1")
    holder = Provisioning(ledger, catalog(), caps=DestructiveCaps(1, 1)).create_saga(
        "update", {"droplet_id": 1, "size": "s-2vcpu-2gb"}
    )
    assert holder.admitted_at is not None
    return holder.id


def _wait_until_waiting(ledger: Ledger, saga_id: uuid.UUID, proc: Any = None) -> Any:
    import time

    deadline = time.monotonic() + 90
    while True:
        saga = ledger.get_sagas([saga_id]).get(saga_id)
        if saga is not None and saga.waiting_for_admission:
            return saga
        assert time.monotonic() < deadline, proc.communicate() if proc is not None else "never waited"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.1)


def test_sagas_run_wait_waits_recorded_for_a_place_then_runs_the_saga(
    prefect_api: str, sim: httpx.Client, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = _hold_the_only_place(ledger, monkeypatch)
    droplet = seed_droplet(sim)
    saga_id = uuid.uuid4()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "run", "update", "--saga-id", str(saga_id), "--wait", "120",
         "--inputs", json.dumps({"droplet_id": droplet, "size": "s-2vcpu-2gb"})],
        cwd=REPO, env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        waiting = _wait_until_waiting(ledger, saga_id, waiter)
        assert waiting.status.value == "pending" and "SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT" in (
            waiting.waiting_reason or ""
        )
        assert "waiting" in run_cli("show", str(saga_id)).output
        cancelled = run_cli("cancel", str(holder))  # the holder gives its place up
        assert cancelled.exit_code == 0, cancelled.output
        out, err = waiter.communicate(timeout=180)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, out + err
    assert f"saga {saga_id} waits to start: 1 destructive sagas" in err
    done = ledger.get_saga(saga_id)
    assert done.status.value == "completed" and done.admitted_at is not None
    assert done.waiting_since is not None and done.waiting_since < done.admitted_at


def test_a_flow_run_over_the_cap_waits_says_why_in_its_logs_and_card_then_runs(
    prefect_api: str, sim: httpx.Client, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import flow_for

    holder = _hold_the_only_place(ledger, monkeypatch)
    droplet = seed_droplet(sim)
    saga_id = uuid.uuid4()
    ended: dict[str, Any] = {}

    def run() -> None:
        ended["state"] = flow_for("update")(
            droplet_id=droplet, size="s-2vcpu-2gb", saga_id=saga_id, return_state=True
        )

    flow_thread = threading.Thread(target=run, daemon=True)
    flow_thread.start()
    waiting = _wait_until_waiting(ledger, saga_id)
    assert waiting.flow_run_id is not None
    with httpx.Client(base_url=prefect_api, timeout=10) as prefect:
        logs = _wait_for_log(prefect, str(waiting.flow_run_id), f"saga {saga_id} waits to start")
        assert "SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT allows (1)" in logs
        [card] = prefect.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": [f"saga-{saga_id}"]}}}
        ).json()
        assert f"update saga {str(saga_id)[:8]} waits to start" in card["description"]
    assert run_cli("cancel", str(holder)).exit_code == 0
    flow_thread.join(120)
    assert ended["state"].is_completed(), ended["state"]
    assert ledger.get_saga(saga_id).status.value == "completed"


def _wait_for_log(prefect: httpx.Client, flow_run_id: str, text_in_it: str) -> str:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = prefect.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}).json()
        found = [entry["message"] for entry in logs if text_in_it in entry["message"]]
        if found:
            return str(found[0])
        time.sleep(0.2)
    raise AssertionError(f"no log of flow run {flow_run_id} says {text_in_it!r}")
