"""Fleet throughput against DigitalOcean's rate limit, through ``flows.fleet.fleet_snapshot``, its
sagas run by one ``sagas.worker.QueueWorker`` of ``CONCURRENCY`` threads in this process.

The simulator (its own process) enforces 250 requests a minute per token; its time runs
``SCALE`` times faster (``time_scale``) and the client's budget is told the same
(``SAGAS_DO_RATE_WINDOW_SCALE``). Polling settings are the product defaults (1 s, x1.6, cap 15 s)
scaled the same way. ``baseline`` polls every 5 simulated seconds, as the original system did.

Throughput is measured in steady state: before the flow starts, the token's first minute of
allowance is spent evenly (250 GETs over one simulated minute, through the same budget), so no
unspent burst flatters the result; then snapshots completed per simulated minute, from the flow's
start to the last saga's end (flow start-up, the droplet listing and the last saga's latency
count). The rate-limit bound is 250 / R_MIN snapshots a minute, with R_MIN = 3 the fewest requests
a snapshot saga can make: the POST, one action GET that finds it completed, one listing GET that
finds the snapshot (nothing is read before the POST: only after an unanswered one does the saga
look up what its name made, ``tasks.snapshots``). Requests per snapshot are the sagas' requests;
the flow's one listing of the tagged droplets is reported beside them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any

from benchmarks.common import (
    emit,
    metric,
    scratch_database,
    seed_droplets,
    simulator_counters,
    simulator_process,
)

SCALE = float(os.environ.get("BENCH_FLEET_SCALE", "0.25"))
DROPLETS = int(os.environ.get("BENCH_FLEET_DROPLETS", "150"))
WARMUP = int(os.environ.get("BENCH_FLEET_WARMUP", "20"))
CONCURRENCY = int(os.environ.get("BENCH_FLEET_CONCURRENCY", "50"))
LIMIT = 250
R_MIN = 3


def run(mode: str) -> list[Any]:
    with simulator_process(
        time_scale=SCALE, rate_limit_per_minute=LIMIT, rate_limit_per_hour=5000
    ) as sim_url:
        tag = f"bench-{mode}"
        droplets = seed_droplets(sim_url, DROPLETS, tag)
        warmup_tag = f"{tag}-warmup"
        seed_droplets(sim_url, WARMUP, warmup_tag)
        with scratch_database(f"bench_fleet_{mode}_{os.getpid()}") as url:
            poll = {"initial": 1.0, "max": 15.0} if mode == "product" else {"initial": 5.0, "max": 5.0}
            os.environ.update(
                {
                    "SAGAS_DATABASE_URL": url,
                    "SAGAS_HOME": "/tmp/bench-sagas",
                    "SAGAS_DO_API_URL": sim_url,
                    "SAGAS_DO_TOKEN": f"bench-{mode}-{uuid.uuid4().hex}",
                    "SAGAS_DO_RATE_LIMIT_PER_MINUTE": str(LIMIT),
                    "SAGAS_DO_RATE_WINDOW_SCALE": str(SCALE),
                    "SAGAS_POLL_INITIAL_SECONDS": str(poll["initial"] * SCALE),
                    "SAGAS_POLL_MAX_SECONDS": str(poll["max"] * SCALE),
                    "SAGAS_LEASE_SECONDS": "60",
                    "SAGAS_DO_RETRY_BASE_SECONDS": str(0.5 * SCALE),
                }
            )
            if mode == "baseline":
                import tasks.waiting

                tasks.waiting.TYPICAL.enabled = False  # the original: poll at once, then every 5 s
            from app.wiring import build_app
            from flows.fleet import fleet_snapshot
            from sagas.ledger.database import engine_for
            from sagas.settings import TokenPurpose, load_settings
            from sagas.worker import QueueWorker

            # The process learns how long snapshots take (``tasks.waiting.TypicalWait``) from its
            # first waits, missing a few first polls meanwhile: a fleet that has been running for a
            # while has learnt them. A first fleet run over WARMUP other droplets, its requests
            # reported on their own row.
            app = build_app()
            worker = QueueWorker(
                app.ledger, app.runner, queue="fleet", concurrency=CONCURRENCY, poll_seconds=0.05
            )
            working = threading.Thread(target=worker.run, daemon=True)
            working.start()
            cold = simulator_counters(sim_url)
            warmup = fleet_snapshot(tag=warmup_tag)
            warm_counters = simulator_counters(sim_url)
            # Start in steady state: spend the first minute's allowance evenly, as a fleet that has been
            # running for a while would have, so the window holds no unspent burst of 250 requests;
            # through the budget the flow spends (the one shared in the ledger), as every process does.
            warm = build_app().services()
            for _ in range(LIMIT):
                warm.digitalocean(TokenPurpose.READ).get_droplet(droplets[0])
                time.sleep(60 * SCALE / LIMIT)
            warm.close()
            # The flow plans and watches; one worker, a thread of this process as the flow's own
            # threads were before, runs the sagas (benchmarks/workers.py spreads them over processes).
            before = simulator_counters(sim_url)
            t0 = time.time()
            try:
                result = fleet_snapshot(tag=tag)
            finally:
                worker.stop()
                working.join(60)
            wall = time.time() - t0
            counters = simulator_counters(sim_url)
            from sqlalchemy import text

            with engine_for(load_settings()).connect() as conn:
                finished = sorted(
                    r[0].timestamp()
                    for r in conn.execute(
                        text("SELECT finished_at FROM saga_runs WHERE status = 'completed'")
                    )
                    if r[0].timestamp() >= t0  # the warm-up's sagas ended before the flow began
                )
    requests = sum(counters["requests"].values()) - sum(before["requests"].values())
    warmed = warmup["outcomes"].get("completed", 0)
    # The sagas' requests, as below: the warm-up flow's droplet listing is not a snapshot's.
    warmup_requests = sum(
        n - cold["requests"].get(route, 0)
        for route, n in warm_counters["requests"].items()
        if route != "GET /v2/droplets"
    )
    warmup_per_snapshot = warmup_requests / warmed if warmed else float("nan")
    r429 = counters["responses_429"] - before["responses_429"]
    completed = result["outcomes"].get("completed", 0)
    sim_minutes = (finished[-1] - t0) / (60 * SCALE)
    per_minute = len(finished) / sim_minutes
    bound = LIMIT / R_MIN
    # The flow's listing of the tagged droplets is a request per run, not per snapshot: it counts in
    # the throughput, and is shown beside the per-snapshot figure rather than spread into it.
    listing = counters["requests"].get("GET /v2/droplets", 0) - before["requests"].get("GET /v2/droplets", 0)
    per_snapshot = (requests - listing) / completed if completed else float("nan")
    routes = ", ".join(
        f"{k}: {(v - before['requests'].get(k, 0)) / completed:.2f}"
        for k, v in sorted(counters["requests"].items())
        if v - before["requests"].get(k, 0) and k != "GET /v2/droplets"
    )
    routes += f"; besides, the flow's droplet listing: {listing} request(s), {requests / completed:.3f} per snapshot with it"
    label = "fleet" if mode == "product" else "fleet_baseline_5s"
    detail = (
        f"{completed}/{DROPLETS} snapshots, one worker of {CONCURRENCY} threads, time_scale {SCALE}, wall {wall:.1f}s;"
        f" {per_minute:.1f}/sim-min from flow start to last saga vs bound {bound:.1f}/sim-min (250 req/min / {R_MIN} req)"
    )
    if mode == "product":
        return [
            metric(f"{label}.throughput_vs_bound", per_minute / bound, "x", ">=", 0.90, detail),
            metric(f"{label}.http_429", r429, "count", "<=", 0),
            metric(f"{label}.requests_per_snapshot", per_snapshot, "req", "<=", 3.0, f"per route: {routes}"),
            metric(f"{label}.snapshots_per_sim_minute", per_minute, "/min", ">=", 75),
            metric(
                f"{label}.warmup_requests_per_snapshot",
                warmup_per_snapshot,
                "req",
                detail=f"the process's first {warmed} snapshots (another tag, before the steady-state"
                f" minute), while it learns how long they take: its first polls come too early",
            ),
        ]
    return [
        metric(f"{label}.throughput_vs_bound", per_minute / bound, "x", detail=detail),
        metric(f"{label}.http_429", r429, "count"),
        metric(f"{label}.requests_per_snapshot", per_snapshot, "req", detail=f"per route: {routes}"),
    ]


def main() -> None:
    emit(run(sys.argv[1] if len(sys.argv) > 1 else "product"))


if __name__ == "__main__":
    main()
