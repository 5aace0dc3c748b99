"""A real Prefect installation for a test module: server on Postgres, work pool, deployments, worker.

Import the fixture into a test module (it is module-scoped; not in conftest, so only modules that
ask for it pay its ~30 s start-up)::

    from tests.prefect_live import LivePrefect, prefect_live_fixture  # noqa: F401

    def test_x(prefect_live: LivePrefect) -> None: ...

What ``prefect_live`` starts, as an operator would (README / prefect.yaml):

- ``prefect server start`` on a free loopback port, backed by a dedicated database
  ``prefect_test_<pid>`` on the ledger tests' Postgres server (asyncpg driver), PREFECT_HOME in a
  temporary directory, analytics off;
- the ``sagas`` process work pool (the same API call ``prefect work-pool create sagas --type
  process`` makes, made in-process: the CLI would cost ~5 s of start-up for one request);
- ``prefect deploy --all`` from the repository's prefect.yaml (SAGAS_PROJECT_DIR = repo root),
  then ``deployments.seal`` (unknown parameter names refused), in-process;
- ``prefect worker start --pool sagas`` with the module's SAGAS_* settings (ledger, simulator,
  token, fast polls) and 1 s poll intervals, started while the deployments are being created.

Teardown stops the worker (SIGINT, SIGTERM, SIGKILL: a scripted worker ignores the first SIGTERM)
and the server, then drops the database. Settings never leak: in-process calls wrap themselves in
``temporary_settings({PREFECT_API_URL: ...})``; nothing is written to os.environ.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import REPO, SAGAS_ENV

POOL = "sagas"
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_TIMEOUT = 120.0
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# Poll intervals of the worker and of the runner inside each flow run: a triggered run starts in
# ~1 s plus the flow run process's own start-up, instead of 10-15 s with Prefect's defaults.
FAST_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "2",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    "PREFECT_CLI_PROMPT": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_url(database_url: str) -> str:
    """Where to CREATE/DROP Prefect's database: the ledger tests' own database (any database of the
    server will do, and this one is known to accept our credentials)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def prefect_database_url(database_url: str, name: str) -> str:
    url = make_url(database_url).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]
    log: Path
    out: IO[bytes]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def _spawn(args: list[str], env: dict[str, str], log: Path) -> _Proc:
    out = log.open("ab")
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group (the server's uvicorn child is in it)
    )  # fmt: skip
    return _Proc(proc, log, out)


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process (Linux /proc)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                table[int(stat.parent.name)] = int(fields[1])
    return table


def process_tree(pid: int) -> list[int]:
    """``pid`` (if alive) and all its live descendants, parents first."""
    table = _process_table()
    tree = [pid] if pid in table else []
    for parent in tree:  # grows while iterating: breadth first
        tree.extend(child for child, ppid in table.items() if ppid == parent)
    return tree


def live_pids(pids: list[int] | set[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    table = _process_table()
    return [pid for pid in pids if pid in table]


def _kill_all(pids: set[int]) -> None:
    alive = _process_table()
    for pid in pids:
        if pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stop(p: _Proc, steps: list[tuple[int, float]]) -> int | None:
    """Send each signal to the process group in turn until the leader exits, then SIGKILL whatever
    is left of it and of the processes it started (flow runs live in sessions of their own)."""
    started: set[int] = set()
    try:
        for sig, wait in steps:
            started.update(process_tree(p.proc.pid))
            if not p.alive:
                break
            _signal_group(p.proc, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(wait)
        started.update(process_tree(p.proc.pid))
        if p.alive:
            _signal_group(p.proc, signal.SIGKILL)
            p.proc.wait(10)
        _signal_group(p.proc, signal.SIGKILL)
        started.discard(p.proc.pid)
        _kill_all(started)
        return p.proc.returncode
    finally:
        p.out.close()


@dataclass
class LivePrefect:
    """A running server + worker. ``env`` is the environment of every process started for it."""

    api_url: str
    env: dict[str, str]
    home: Path
    timings: dict[str, float] = field(default_factory=dict)
    server: _Proc | None = None
    worker: _Proc | None = None
    retired_workers: list[_Proc] = field(default_factory=list)
    _worker_count: int = 0

    # -- in-process access --------------------------------------------------------------------

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Point in-process Prefect calls at this server (restored on exit)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            yield

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A SyncPrefectClient for this server."""
        from prefect.client.orchestration import get_client

        with self.settings(), get_client(sync_client=True) as client:
            yield client

    # -- worker ---------------------------------------------------------------------------------

    def start_worker(self, *, wait: bool = True, timeout: float = 60.0) -> subprocess.Popen[bytes]:
        """Start a ``prefect worker start --pool sagas``; with ``wait``, until it has polled the pool."""
        if self.worker is not None and self.worker.alive:
            raise RuntimeError("a worker is already running: kill_worker() or stop_worker() first")
        if self.worker is not None:
            self.retired_workers.append(self.worker)
        self._worker_count += 1
        name = f"test-worker-{os.getpid()}-{self._worker_count}"
        started = time.monotonic()
        self.worker = _spawn(
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name],
            self.env,
            self.home / f"worker-{self._worker_count}.log",
        )
        if wait:
            self.wait_for_worker(name, timeout)
            self.timings[f"worker {self._worker_count} start"] = time.monotonic() - started
        return self.worker.proc

    def wait_for_worker(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if any(w.name == name for w in client.read_workers_for_work_pool(POOL)):
                    return
                if self.worker is None or not self.worker.alive:
                    break
                time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not poll the pool:\n{self.worker_log()}")

    def kill_worker(self, sig: int = signal.SIGKILL, *, with_flow_runs: bool = True) -> int | None:
        """Signal the worker. ``with_flow_runs`` (a host dying) also signals every process it started:
        the process worker starts each flow run in a session of its own, so a group signal would
        miss them and they would go on running. With SIGKILL, waits for the worker to be gone and
        returns its exit code; other signals return None at once."""
        if self.worker is None or not self.worker.alive:
            raise RuntimeError("no worker running")
        proc = self.worker.proc
        if with_flow_runs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)  # no new flow run while its children are collected
            for pid in reversed(process_tree(proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
        else:
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            return proc.wait(10)
        return None

    def worker_processes(self) -> list[int]:
        """The live worker process and every process it started (flow runs), parents first."""
        if self.worker is None or not self.worker.alive:
            return []
        return process_tree(self.worker.proc.pid)

    def stop_worker(self) -> int | None:
        """Stop the worker as an operator would (SIGINT, then SIGTERM twice, then SIGKILL)."""
        if self.worker is None:
            return None
        code = _stop(self.worker, [(signal.SIGINT, 10), (signal.SIGTERM, 3), (signal.SIGTERM, 3)])
        self.retired_workers.append(self.worker)
        self.worker = None
        return code

    def worker_log(self, lines: int = 80) -> str:
        return _tail(self.worker.log, lines) if self.worker else "(no worker)"

    # -- runs -----------------------------------------------------------------------------------

    def run_deployment(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = 120.0,
    ) -> Any:
        """``prefect.deployments.run_deployment`` against this server. ``timeout=0`` returns the
        scheduled run at once; otherwise waits until the run is final (TimeoutError if it is not)."""
        from prefect.deployments import run_deployment

        with self.settings():
            flow_run = run_deployment(
                name, parameters=parameters, idempotency_key=idempotency_key, timeout=0, poll_interval=0.2
            )
        if timeout == 0:
            return flow_run
        return self.wait_for_flow_run(flow_run.id, timeout)

    def wait_for_flow_run(self, flow_run_id: uuid.UUID | str, timeout: float | None = 120.0) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.client() as client:
            while True:
                flow_run = client.read_flow_run(uuid.UUID(str(flow_run_id)))
                if flow_run.state is not None and flow_run.state.type.value in FINAL_STATES:
                    return flow_run
                if deadline is not None and time.monotonic() > deadline:
                    state = flow_run.state.name if flow_run.state else None
                    raise TimeoutError(
                        f"flow run {flow_run_id} still {state} after {timeout} s; worker log:\n"
                        f"{self.worker_log()}"
                    )
                time.sleep(0.2)


# -- start-up and teardown ------------------------------------------------------------------------


def _base_env(home: Path, api_url: str, sagas: dict[str, str]) -> dict[str, str]:
    """os.environ without any PREFECT_*/SAGAS_* of the caller's, plus this installation's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SAGAS_"))}
    env.update(FAST_PREFECT)
    env.update(sagas)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        SAGAS_PROJECT_DIR=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_healthy(live: LivePrefect, timeout: float) -> None:
    assert live.server is not None
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if not live.server.alive:
                raise RuntimeError(f"prefect server exited:\n{_tail(live.server.log)}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{live.api_url}/health").status_code == 200:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"prefect server not healthy after {timeout} s:\n{_tail(live.server.log)}")


def _import_prefect() -> None:
    import prefect.client.orchestration
    import prefect.deployments
    import prefect.workers.process  # noqa: F401


def _create_pool(live: LivePrefect) -> None:
    """What ``prefect work-pool create sagas --type process`` does, without its CLI start-up."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with live.client() as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process", base_job_template=template))


def _deploy(live: LivePrefect) -> None:
    log = live.home / "deploy.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--all"],
            cwd=REPO, env=live.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=180, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed ({done.returncode}):\n{_tail(log)}")
    # What `python -m deployments.seal` does after every deploy, in-process (no CLI start-up).
    from deployments.seal import seal

    with live.client() as client:
        seal(client)


@contextlib.contextmanager
def live_prefect(
    database_url: str, sagas_env: dict[str, str], home: Path, *, scheduler: bool = False
) -> Iterator[LivePrefect]:
    """Start everything (see the module docstring); yields the handle; tears everything down.

    ``scheduler=False`` (the default) starts the server with ``--no-scheduler``: the deployments
    keep their schedules (recovery-sweep every minute, fleet-snapshot nightly) but no run is
    created from them, so the only runs are the ones a test triggers. A module that wants the
    scheduled sweep builds its own module fixture with ``live_prefect(..., scheduler=True)``.
    """
    t0 = time.monotonic()
    admin = admin_url(database_url)
    db_name = f"prefect_test_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    env = _base_env(home, api_url, sagas_env)
    live = LivePrefect(api_url=api_url, env=env, home=home)
    server_env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database_url(database_url, db_name),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    server_env.pop("PREFECT_API_URL")
    try:
        live.server = _spawn(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
            + ([] if scheduler else ["--no-scheduler"]),
            server_env,
            home / "server.log",
        )
        _import_prefect()  # ~4 s in this process, while the server migrates its database
        _wait_healthy(live, SERVER_START_TIMEOUT)
        live.timings["server start"] = time.monotonic() - t0

        t = time.monotonic()
        _create_pool(live)
        live.timings["work pool"] = time.monotonic() - t

        t = time.monotonic()
        live.start_worker(wait=False)  # starts up while the deployments are created
        _deploy(live)
        live.timings["deploy --all"] = time.monotonic() - t
        assert live.worker is not None
        live.wait_for_worker(f"test-worker-{os.getpid()}-1")
        live.timings["deploy + worker ready"] = time.monotonic() - t
        live.timings["total start-up"] = time.monotonic() - t0
        yield live
    finally:
        t = time.monotonic()
        with contextlib.ExitStack() as cleanup:  # each step runs even if one before it raised
            cleanup.callback(_report, live, t)
            cleanup.callback(_drop_database, admin, db_name)
            if live.server is not None:
                cleanup.callback(_stop, live.server, [(signal.SIGTERM, 15)])
            for old in live.retired_workers:
                if not old.out.closed:
                    cleanup.callback(_stop, old, [])
            live.stop_worker()


def _drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _report(live: LivePrefect, teardown_started: float) -> None:
    """Timings on stderr (seen with ``pytest -s``) and in PREFECT_HOME/timings.json."""
    live.timings["teardown"] = time.monotonic() - teardown_started
    (live.home / "timings.json").write_text(json.dumps(live.timings, indent=1))
    line = ", ".join(f"{k} {v:.1f} s" for k, v in live.timings.items())
    sys.stderr.write(f"\n[prefect_live] {line}\n")


def module_sagas_env(database_url: str, simulator_url: str, home: Path) -> dict[str, str]:
    """The SAGAS_* values of the ``env`` fixture, fixed for a whole module (the worker's)."""
    return {
        **SAGAS_ENV,
        "SAGAS_DATABASE_URL": database_url,
        "SAGAS_DO_API_URL": simulator_url,
        "SAGAS_HOME": str(home),
    }


@pytest.fixture(scope="module", name="prefect_live")
def prefect_live_fixture(
    database_url: str, simulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LivePrefect]:
    """A real Prefect server + ``sagas`` pool + deployments + worker for this test module."""
    root = tmp_path_factory.mktemp("prefect-live")
    sagas = module_sagas_env(database_url, simulator.base_url, root / "sagas-home")
    with live_prefect(database_url, sagas, root / "prefect-home") as live:
        yield live
