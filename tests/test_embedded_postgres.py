"""The embedded ledger server: started for users with no database, shared, pruned, stopped cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
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


@pytest.mark.slow
def test_embedded_server_is_reused_pruned_and_stopped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pgdata = (home / "pgdata").resolve()

    first = _run(home, "once")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert out.strip() == "0"  # a fresh, migrated, empty ledger
    assert _postgres_for(pgdata) == []  # the last user stopped it on exit

    # A user killed with SIGKILL never removes its handle...
    holder = _run(home, "hold")
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "0"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    handles = json.loads((pgdata / ".handle_pids.json").read_text())
    assert holder.pid in handles
    assert _postgres_for(pgdata) != []

    # ...so the next user prunes it, reuses the data, and is the last one out: the server stops.
    last = _run(home, "once")
    out, err = last.communicate(timeout=120)
    assert last.returncode == 0, err
    deadline = time.monotonic() + 10
    while _postgres_for(pgdata) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _postgres_for(pgdata) == []
    assert json.loads((pgdata / ".handle_pids.json").read_text()) == []
