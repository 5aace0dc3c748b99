"""The fleet spread over ``sagas worker`` processes, and a rollback started in the middle of it.

The simulator (its own process) enforces 250 requests a minute per token, with time running
``SCALE`` times real time (the clients' budget is told the same; polling settings are the product
defaults, scaled). Its hourly limit is lifted to 15,000 (250 x 60), so that the minute's limit is
the one that binds, as it is for any fleet that fits in an hour's 5,000 requests (1,000 droplets
at 3 requests would not: the hour's bound is the subject of the README's sizing notes, not of a
benchmark that must end within minutes).

- **workers4**: ``WORKERS`` processes (``python -m app.cli worker --queue fleet --concurrency
  CONCURRENCY``, what an operator starts) and ``flows.fleet.fleet_snapshot`` over ``DROPLETS``
  tagged droplets, run in this process (it plans, watches and reports). Before the flow starts, the
  token's first minute of allowance is spent evenly (250 GETs over one simulated minute, through
  the shared budget), so no unspent burst flatters the result. Achieved: snapshot sagas completed
  per simulated minute, from the flow's start to the last one's end (start-up, planning and the
  last saga's latency count). **The bound**: 250 requests a minute / the requests a snapshot saga
  *measurably* made in this run (every request the simulator answered during the fleet, the
  droplet listing included, over the snapshots completed), so that the row measures how close the
  workers come to what the rate limit allows whatever a snapshot costs; the README's definition (4,
  the fewest a snapshot can make) is shown beside it. 429s are counted by the simulator.
- **rollback_slowdown_during_fleet**: a second fleet of ``ROLLBACK_FLEET`` droplets through the
  same workers, and a ``rollback`` saga (safety snapshot, power off, restore, power on; no approval
  asked) started by a person (interactive priority) with the core runner in this process, on a
  droplet outside the fleet, when a quarter, half and three quarters of that fleet are done, one
  after the other; the median of their durations over the median of three on an idle budget (before
  any fleet). The fleet's requests are scheduled work: it leaves 10 of each minute's 250 requests
  (4%) and 20% of each hour to sagas people started and to compensations, and gives way to one
  that waits whenever slots free (``sagas/digitalocean/shared_budget.py``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    PYTHON,
    REPO,
    emit,
    metric,
    scratch_database,
    seed_droplets,
    simulator_counters,
    simulator_process,
    stop,
)

SCALE = float(os.environ.get("BENCH_WORKERS_SCALE", "0.1"))
DROPLETS = int(os.environ.get("BENCH_WORKERS_DROPLETS", "1000"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
CONCURRENCY = int(os.environ.get("BENCH_WORKERS_CONCURRENCY", "16"))
LIMIT = 250
HOURLY = LIMIT * 60
R_DEFINED = 3  # the fewest requests a snapshot saga can make (benchmarks/fleet.py: R_MIN)
ROLLBACKS_AT = (0.25, 0.50, 0.75)
STEP_TIMES: list[str] = []  # each rollback's steps, for the record
ROLLBACK_FLEET = int(os.environ.get("BENCH_WORKERS_ROLLBACK_DROPLETS", "300"))


def _env(sim_url: str, url: str) -> dict[str, str]:
    return {
        "SAGAS_DATABASE_URL": url,
        "SAGAS_HOME": "/tmp/bench-sagas",
        "SAGAS_DO_API_URL": sim_url,
        "SAGAS_DO_TOKEN": f"bench-workers-{uuid.uuid4().hex}",
        "SAGAS_DO_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "SAGAS_DO_RATE_LIMIT_PER_HOUR": str(HOURLY),
        "SAGAS_DO_RATE_WINDOW_SCALE": str(SCALE),
        "SAGAS_POLL_INITIAL_SECONDS": str(1.0 * SCALE),
        "SAGAS_POLL_MAX_SECONDS": str(15.0 * SCALE),
        "SAGAS_LEASE_SECONDS": "60",
        "SAGAS_DO_RETRY_BASE_SECONDS": str(0.5 * SCALE),
        "SAGAS_SHUTDOWN_TIMEOUT_SECONDS": str(120 * SCALE),
    }


@contextlib.contextmanager
def worker_processes(env: dict[str, str], logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``WORKERS`` ``sagas worker`` processes, each up and polling before this yields."""
    procs, outs = [], []
    try:
        for i in range(WORKERS):
            out = (logs / f"worker-{i}.log").open("wb")
            outs.append(out)
            procs.append(
                subprocess.Popen(
                    [
                        PYTHON,
                        "-m",
                        "app.cli",
                        "worker",
                        "--queue",
                        "fleet",
                        "--concurrency",
                        str(CONCURRENCY),
                        "--poll",
                        "0.2",
                        "--grace",
                        "5",
                    ],
                    cwd=REPO,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        for i, proc in enumerate(procs):
            log = logs / f"worker-{i}.log"
            while "runs queue fleet" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"worker {i} did not start:\n{log.read_text(errors='replace')[-2000:]}"
                    )
                time.sleep(0.1)
        yield procs
    finally:
        for proc in procs:
            stop(proc)
        for out in outs:
            out.close()


def golden_snapshot(sim_url: str, droplet: int) -> int:
    """A snapshot of ``droplet`` to roll back to, made with a token of its own (not the bench's)."""
    headers = {"Authorization": f"Bearer setup-{uuid.uuid4().hex}"}
    with httpx.Client(base_url=sim_url, headers=headers, timeout=10) as api:
        action = api.post(
            f"/v2/droplets/{droplet}/actions", json={"type": "snapshot", "name": "golden"}
        ).json()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if api.get(f"/v2/actions/{action['action']['id']}").json()["action"]["status"] == "completed":
                for snap in api.get(f"/v2/droplets/{droplet}/snapshots").json()["snapshots"]:
                    if snap["name"] == "golden":
                        return int(snap["id"])
            time.sleep(0.1)
    raise RuntimeError("the golden snapshot never appeared")


def rollback_once(droplet: int, snapshot: int) -> float:
    """Seconds a rollback saga a person started takes, start to end (the core runner, this process)."""
    from app.wiring import build_app

    app = build_app()
    saga = app.provisioning().create_saga(
        "rollback",
        {"droplet_id": droplet, "snapshot_id": snapshot},
        triggered_by="user:bench",
        options={"require_approval": False},
    )
    runner = app.runner()
    started = time.perf_counter()
    try:
        final = runner.advance(saga.id)
    finally:
        runner.services.close()
    took = time.perf_counter() - started
    if final.status.value != "completed":
        raise RuntimeError(f"rollback saga {saga.id} ended {final.status.value}: {final.error}")
    steps = app.ledger.list_step_results(saga.id)
    STEP_TIMES.append(
        " ".join(
            f"{s.step_name.split('_')[0]}:{(s.completed_at - s.started_at).total_seconds():.2f}"
            for s in steps
            if s.started_at and s.completed_at
        )
    )
    return took


def main() -> None:
    logs = Path(os.environ.get("BENCH_LOGS", "/tmp")) / f"bench-workers-{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    with simulator_process(
        time_scale=SCALE, rate_limit_per_minute=LIMIT, rate_limit_per_hour=HOURLY
    ) as sim_url:
        droplets = seed_droplets(sim_url, DROPLETS, "workers")
        second = seed_droplets(sim_url, ROLLBACK_FLEET, "workers-b")
        [target] = seed_droplets(sim_url, 1, "rollback-target")  # another tag: not in the fleet
        golden = golden_snapshot(sim_url, target)
        with scratch_database(f"bench_workers_{os.getpid()}") as url:
            env = _env(sim_url, url)
            os.environ.update(env)
            from app.wiring import build_app
            from flows.fleet import fleet_snapshot
            from sagas.settings import TokenPurpose

            app = build_app()  # migrates the scratch ledger before the workers connect
            idle, idle_requests = [], []
            for _ in ROLLBACKS_AT:
                before = sum(simulator_counters(sim_url)["requests"].values())
                idle.append(rollback_once(target, golden))
                idle_requests.append(sum(simulator_counters(sim_url)["requests"].values()) - before)
            time.sleep(66 * SCALE)  # the idle rollbacks' requests leave the minute window

            with worker_processes(env, logs):
                warm = app.services()
                for _ in range(LIMIT):
                    warm.digitalocean(TokenPurpose.READ).get_droplet(droplets[0])
                    time.sleep(60 * SCALE / LIMIT)
                warm.close()
                before = simulator_counters(sim_url)
                t0 = time.time()
                result = fleet_snapshot(tag="workers")
                counters = simulator_counters(sim_url)
                finished, first_start = _finished()

                # A second fleet, with rollbacks started at a quarter, half and three quarters of it.
                outcome: dict[str, Any] = {}

                def fleet() -> None:
                    try:
                        outcome["result"] = fleet_snapshot(tag="workers-b")
                    except BaseException as exc:
                        outcome["error"] = exc

                flow_thread = threading.Thread(target=fleet, daemon=True)
                flow_thread.start()
                busy = []
                for share in ROLLBACKS_AT:
                    while _completed() - len(finished) < share * len(second) and flow_thread.is_alive():
                        time.sleep(0.1)
                    busy.append((_completed() - len(finished), rollback_once(target, golden)))
                flow_thread.join(1800)
    if "error" in outcome:
        raise RuntimeError(f"the second fleet flow failed: {outcome['error']}")
    requests = sum(counters["requests"].values()) - sum(before["requests"].values())
    r429 = counters["responses_429"] - before["responses_429"]
    completed = len(finished)
    per_rollback = statistics.mean(idle_requests)
    per_snapshot = requests / completed
    sim_minutes = (finished[-1] - t0) / (60 * SCALE)
    per_minute = completed / sim_minutes
    bound = LIMIT / per_snapshot
    # Steady state, for the record: between the 10th and the 90th percentile of completions.
    lo, hi = finished[len(finished) // 10], finished[len(finished) * 9 // 10]
    steady = (len(finished) * 8 // 10) / ((hi - lo) / (60 * SCALE)) if hi > lo else float("nan")
    ratios = [took / statistics.median(idle) for _, took in busy]
    slowdown = statistics.median(t for _, t in busy) / statistics.median(idle)
    emit(
        [
            metric(
                "scale.workers4_throughput_vs_bound",
                per_minute / bound,
                "x",
                ">=",
                0.90,
                f"{completed}/{DROPLETS} snapshots by {WORKERS} `sagas worker` processes of {CONCURRENCY} threads,"
                f" time_scale {SCALE}; {per_minute:.1f}/sim-min from flow start to last saga vs bound {bound:.1f}/sim-min"
                f" (250 req/min / {per_snapshot:.2f} requests per snapshot, measured); against the README's"
                f" {R_DEFINED} requests (bound {LIMIT / R_DEFINED:.1f}): {per_minute / (LIMIT / R_DEFINED):.2f};"
                f" the first saga started {first_start - t0:.1f} s after the flow, the last ended"
                f" {finished[-1] - t0:.1f} s after it; {steady:.1f}/sim-min between the 10th and 90th percentile"
                f" of completions; flow result {result}",
            ),
            metric("scale.workers4_http_429", r429, "count", "<=", 0),
            metric(
                "scale.workers4_requests_per_snapshot",
                per_snapshot,
                "req",
                detail=f"{requests} requests answered during the fleet, droplet listing included",
            ),
            metric(
                "scale.rollback_slowdown_during_fleet",
                slowdown,
                "x",
                "<=",
                1.5,
                f"rollback saga (interactive) started during a second fleet of {ROLLBACK_FLEET}, with "
                + ", ".join(f"{done} snapshots done" for done, _ in busy)
                + f": {', '.join(f'{t:.2f}' for _, t in busy)} s vs idle {', '.join(f'{t:.2f}' for t in idle)} s"
                f" (ratios {', '.join(f'{r:.2f}' for r in ratios)}); {per_rollback:.0f} requests each; the fleet"
                " (scheduled) leaves 10 of 250 requests a minute and 20% of the hour to priority work;"
                f" step seconds idle [{'; '.join(STEP_TIMES[: len(idle)])}], during"
                f" [{'; '.join(STEP_TIMES[len(idle) :])}]",
            ),
        ]
    )


def _engine() -> Any:
    from sagas.ledger.database import engine_for
    from sagas.settings import load_settings

    return engine_for(load_settings())


def _completed() -> int:
    from sqlalchemy import text

    with _engine().connect() as conn:
        done: int = conn.execute(
            text("SELECT count(*) FROM saga_runs WHERE kind = 'snapshot' AND status = 'completed'")
        ).scalar_one()
    return done


def _finished() -> tuple[list[float], float]:
    """When each completed snapshot saga ended, in order; when the first one started."""
    from sqlalchemy import text

    with _engine().connect() as conn:
        rows = list(
            conn.execute(
                text(
                    "SELECT started_at, finished_at FROM saga_runs WHERE kind = 'snapshot' AND status = 'completed'"
                )
            )
        )
    return sorted(r[1].timestamp() for r in rows), min(r[0].timestamp() for r in rows)


if __name__ == "__main__":
    main()
