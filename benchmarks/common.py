"""What every benchmark shares: metrics, scratch databases, a Prefect server on Postgres, the simulator.

Each benchmark module runs as its own process (``python -m benchmarks.<name>``) and prints one JSON
line of metrics on stdout, so peak RSS and rate budgets belong to one benchmark only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PYTHON = sys.executable


@dataclass
class Metric:
    name: str
    value: float
    unit: str
    target: str  # e.g. "<= 1.10"; "" for an informational row
    ok: bool | None  # None: no target
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def check(value: float, op: str, bound: float) -> bool:
    return value <= bound if op == "<=" else value >= bound


def metric(
    name: str, value: float, unit: str, op: str = "", bound: float | None = None, detail: str = ""
) -> Metric:
    if bound is None:
        return Metric(name, value, unit, "", None, detail)
    return Metric(name, value, unit, f"{op} {bound:g}", check(value, op, bound), detail)


def emit(metrics: list[Metric], **extra: Any) -> None:
    """The one line a benchmark process prints for the driver."""
    print("BENCH-RESULT " + json.dumps({"metrics": [m.row() for m in metrics], **extra}), flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_for(database: str, driver: str = "postgresql") -> str:
    base = PG_SERVER.rsplit("/", 1)[0].split("://", 1)[1]
    return f"{driver}://{base}/{database}"


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A fresh database on the machine's Postgres, dropped afterwards; yields a postgresql:// URL."""
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_for(name)
    finally:
        with contextlib.suppress(Exception):
            from sagas.ledger.database import dispose_engines

            dispose_engines()
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process we started (its own process group), politely then firmly."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def prefect_server(database: str) -> Iterator[dict[str, str]]:
    """``prefect server start`` on Postgres, with its own PREFECT_HOME and a free port.

    Yields the environment a client process needs (PREFECT_API_URL, a PREFECT_HOME of its own).
    """
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    port = free_port()
    with scratch_database(database):
        env = {
            **os.environ,
            "PREFECT_HOME": str(home / "server"),
            "PREFECT_API_DATABASE_CONNECTION_URL": url_for(database, "postgresql+asyncpg"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        log = (home / "server.log").open("wb")
        proc = subprocess.Popen(
            [
                str(Path(PYTHON).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/api/health", 90, proc)
            yield {
                "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "PREFECT_HOME": str(home / "client"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
            }
        finally:
            stop(proc)
            log.close()
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def simulator_process(**config: Any) -> Iterator[str]:
    """The DigitalOcean simulator in its own process (it must not share our GIL); yields its URL."""
    port = free_port()
    code = (
        "import sys, json; from sagas.digitalocean.simulator import SimulatorConfig;"
        " from sagas.digitalocean.simulator.server import serve;"
        f" serve('127.0.0.1', {port}, SimulatorConfig.model_validate(json.loads(sys.argv[1])))"
    )
    proc = subprocess.Popen([PYTHON, "-c", code, json.dumps(config)], cwd=REPO, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_sim/state", 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def seed_droplets(base_url: str, count: int, tag: str) -> list[int]:
    ids = []
    with httpx.Client(base_url=base_url, timeout=10) as sim:
        for i in range(count):
            body = sim.post("/_sim/droplets", json={"name": f"bench-{tag}-{i}", "tags": [tag]}).json()
            ids.append(int(body["droplet"]["id"]))
    return ids


def simulator_counters(base_url: str) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=10) as sim:
        counters: dict[str, Any] = sim.get("/_sim/state").json()["counters"]
        return counters


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
