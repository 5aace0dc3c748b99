"""``sagas run`` with no PREFECT_API_URL: the temporary Prefect server it starts dies with it, even by kill -9."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path

import httpx
import psutil
import pytest

from sagas.ledger.store import Ledger
from tests.conftest import REPO, seed_droplet, wait_for

pytestmark = pytest.mark.slow

# What Prefect's own temporary server logs, and ours too: the one way to find it from outside.
SAGAS_RUN = [sys.executable, "-m", "app.cli", "run"]
STARTING = re.compile(r"Starting temporary server on (http://127\.0\.0\.1:\d+)")


def _without_a_prefect_api(tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environment["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    environment["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # two busy cores
    return environment


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie: a zombie runs nothing and holds nothing, it only waits to be reaped."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _snapshot_in_progress(sim: httpx.Client, droplet: int) -> bool:
    actions = sim.get("/_sim/state").json()["actions"]
    return any(
        a["type"] == "snapshot" and a["resource_id"] == droplet and a["status"] == "in-progress"
        for a in actions
    )


def _postgres_for(pgdata: Path) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and str(pgdata) in " ".join(p.info["cmdline"] or [])
    ]


@pytest.mark.parametrize("ledger_server", ["configured", "embedded"])
def test_kill_9_of_sagas_run_mid_saga_leaves_nothing_it_started_running(
    ledger_server: str,
    env: dict[str, str],
    sim: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pgdata = (Path(env["SAGAS_HOME"]) / "pgdata").resolve()
    if ledger_server == "embedded":  # no SAGAS_DATABASE_URL: the CLI starts (or joins) its own Postgres
        monkeypatch.delenv("SAGAS_DATABASE_URL")
    sim.post("/_sim/config", json={"action_seconds": 6000}).raise_for_status()  # 2 min: mid-saga
    droplet = seed_droplet(sim)
    saga_id = uuid.uuid4()
    said = tmp_path / "stderr.txt"  # a file, not a pipe: a child that outlives the CLI would hold a pipe open
    with said.open("w") as stderr:
        cli = subprocess.Popen(
            [
                *SAGAS_RUN,
                "snapshot",
                "--saga-id",
                str(saga_id),
                "--inputs",
                json.dumps({"droplet_id": droplet}),
            ],
            cwd=REPO,
            env=_without_a_prefect_api(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(
            lambda: STARTING.search(said.read_text()) is not None or cli.poll() is not None,
            timeout=120,
            what="the temporary server to be started",
        )
        found = STARTING.search(said.read_text())
        assert found is not None, said.read_text()
        server = found.group(1)
        wait_for(lambda: _answers(server), timeout=120, what=f"{server} to answer")
        wait_for(
            lambda: _snapshot_in_progress(sim, droplet), timeout=120, what="the saga's snapshot to start"
        )
        started = psutil.Process(cli.pid).children(recursive=True)
        assert started, "the CLI started no process: where is its server?"
        if ledger_server == "embedded":
            started += _postgres_for(pgdata)
            assert _postgres_for(pgdata), "the embedded Postgres is not running"
    finally:
        cli.kill()  # SIGKILL: no atexit, no finally, nothing of ours runs
        cli.wait(30)

    _, alive = psutil.wait_procs(started, timeout=10)
    still_running = [(p, p.cmdline()) for p in alive if _running(p)]
    still_answers = _answers(server)
    for survivor, _ in still_running:
        survivor.kill()  # a failing run must not leave them behind either
    assert not still_running, [(p.pid, cmdline) for p, cmdline in still_running]
    assert not still_answers, f"{server} still answers"


def test_a_completed_sagas_run_records_its_flow_run_in_prefect_home_and_stops_its_server(
    env: dict[str, str], sim: httpx.Client, ledger: Ledger, tmp_path: Path
) -> None:
    droplet = seed_droplet(sim)
    said = tmp_path / "stderr.txt"
    environment = _without_a_prefect_api(tmp_path)
    with said.open("w") as stderr:
        done = subprocess.run(
            [*SAGAS_RUN, "snapshot", "--json", "--inputs", json.dumps({"droplet_id": droplet})],
            cwd=REPO,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=240,
        )
    assert done.returncode == 0, said.read_text()
    shown = json.loads(done.stdout[done.stdout.index("{") :])
    assert shown["status"] == "completed"
    found = STARTING.search(said.read_text())
    assert found is not None, said.read_text()
    assert not _answers(found.group(1))
    # The server kept PREFECT_HOME's database, as Prefect's own temporary server does.
    database = Path(environment["PREFECT_HOME"]) / "prefect.db"
    with closing(sqlite3.connect(database)) as db:
        states = db.execute(
            "SELECT state_type FROM flow_run WHERE id = ?", (shown["flow_run_id"],)
        ).fetchall()
    assert states == [("COMPLETED",)]


def test_the_server_process_stops_when_its_stdin_closes_though_its_parent_lives(tmp_path: Path) -> None:
    """The portable guard (where there is no PR_SET_PDEATHSIG): our end of the pipe closing is enough."""
    from app.server_child import SHUTDOWN_GRACE_SECONDS

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = f"http://127.0.0.1:{listener.getsockname()[1]}"
    environment = {
        **_without_a_prefect_api(tmp_path),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
    }
    with listener:
        child = subprocess.Popen(
            [sys.executable, "-m", "app.server_child", str(os.getpid()), str(listener.fileno())],
            cwd=REPO,
            env=environment,
            stdin=subprocess.PIPE,
            pass_fds=(listener.fileno(),),
        )
    try:
        wait_for(lambda: _answers(server), timeout=120, what=f"{server} to answer")
        assert child.stdin is not None
        child.stdin.close()
        code = child.wait(SHUTDOWN_GRACE_SECONDS + 5)
    finally:
        child.kill()
        child.wait()
    assert code is not None
    assert not _answers(server)
