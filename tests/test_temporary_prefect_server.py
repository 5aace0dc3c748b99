"""``sagas`` with no PREFECT_API_URL: the temporary Prefect server it starts dies with it, even by kill -9."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import psutil
import pytest

from sagas.ledger.store import Ledger
from tasks.registry import catalog
from tests.conftest import REPO, seed_droplet, wait_for

pytestmark = pytest.mark.slow

SAGAS_RUN = [sys.executable, "-m", "app.cli", "run"]
# What Prefect's own temporary server logs, and ours too.
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


def _server_of(pid: int) -> str | None:
    """The URL of the server that a descendant of ``pid`` listens on at 127.0.0.1, if any."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for process in descendants:
        try:
            for c in process.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN and c.laddr.ip == "127.0.0.1":
                    return f"http://127.0.0.1:{c.laddr.port}"
        except psutil.NoSuchProcess:
            continue
    return None


def _postgres_for(pgdata: Path) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and str(pgdata) in " ".join(p.info["cmdline"] or [])
    ]


def _kill_9_mid_snapshot(
    args: list[str], environment: dict[str, str], sim: httpx.Client, droplet: int, tmp_path: Path
) -> tuple[list[psutil.Process], str]:
    """Start the command, wait until its temporary server answers and its snapshot is under way, then
    SIGKILL it. Returns every process it had started (and its server's URL)."""
    said = tmp_path / "stderr.txt"  # a file, not a pipe: a child that outlives the CLI would hold a pipe open
    with said.open("w") as stderr:
        cli = subprocess.Popen(args, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        # Found from outside, as Prefect's own would be: a process of the CLI's listening on loopback.
        wait_for(
            lambda: _server_of(cli.pid) is not None or cli.poll() is not None,
            timeout=120,
            what="a temporary server to be started",
        )
        server = _server_of(cli.pid)
        assert server is not None, said.read_text()
        wait_for(lambda: _answers(server), timeout=120, what=f"{server} to answer")
        wait_for(lambda: _snapshot_in_progress(sim, droplet), timeout=120, what="the snapshot to start")
        started = psutil.Process(cli.pid).children(recursive=True)
        assert started, "the CLI started no process: where is its server?"
    finally:
        cli.kill()  # SIGKILL: no atexit, no finally, nothing of ours runs
        cli.wait(30)
    return started, server


def _assert_all_gone_within_seconds(started: list[psutil.Process], server: str) -> None:
    _, alive = psutil.wait_procs(started, timeout=10)
    still_running = [(p, p.cmdline()) for p in alive if _running(p)]
    still_answers = _answers(server)
    for survivor, _ in still_running:
        survivor.kill()  # a failing run must not leave them behind either
    assert not still_running, [(p.pid, cmdline) for p, cmdline in still_running]
    assert not still_answers, f"{server} still answers"


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
    run = [*SAGAS_RUN, "snapshot", "--inputs", json.dumps({"droplet_id": droplet})]

    started, server = _kill_9_mid_snapshot(run, _without_a_prefect_api(tmp_path), sim, droplet, tmp_path)

    if ledger_server == "embedded":
        postgres = _postgres_for(pgdata)  # not our child (pg_ctl detaches it), but we started it
        assert postgres, "the embedded Postgres is not running"
        started += postgres
    _assert_all_gone_within_seconds(started, server)


# Saves a Secret block as a user would, with no PREFECT_API_URL: through Prefect's own temporary server,
# into PREFECT_HOME's database. The value comes in the environment, never on a command line.
SAVE_SECRET_BLOCK = """
import os, sys
from prefect.blocks.system import Secret
Secret(value=os.environ["BLOCK_VALUE"]).save(sys.argv[1])
"""


def test_kill_9_of_sagas_resume_reading_its_token_from_a_secret_block_leaves_nothing_running(
    env: dict[str, str], sim: httpx.Client, ledger: Ledger, tmp_path: Path
) -> None:
    """``resume`` runs no flow, but a token in a Prefect Secret block needs Prefect's API."""
    environment = _without_a_prefect_api(tmp_path)
    block = "arcadia-do-token"
    subprocess.run(
        [sys.executable, "-c", SAVE_SECRET_BLOCK, block],
        cwd=REPO,
        env={**environment, "BLOCK_VALUE": environment.pop("SAGAS_DO_TOKEN")},
        check=True,
        timeout=180,
    )
    environment["SAGAS_DO_TOKEN_PROVISIONING_BLOCK"] = block
    environment["SAGAS_DO_TOKEN_READ_BLOCK"] = block
    sim.post("/_sim/config", json={"action_seconds": 6000}).raise_for_status()  # 2 min: mid-saga
    droplet = seed_droplet(sim)
    saga, _ = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": droplet}))
    resume = [sys.executable, "-m", "app.cli", "resume", str(saga.id)]

    started, server = _kill_9_mid_snapshot(resume, environment, sim, droplet, tmp_path)

    _assert_all_gone_within_seconds(started, server)


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
