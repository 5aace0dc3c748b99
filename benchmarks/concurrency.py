"""200 concurrent snapshot sagas in one worker process: peak RSS and wall time.

One Prefect flow runs 200 snapshot sagas at once, each in its own thread (with the flow's
context, so every step is a Prefect task run), against the simulator. The simulator's rate limit
is lifted here (this measures the worker, not the account's limit; the fleet benchmark measures
that), and its time runs at ``time_scale`` 0.1. Peak RSS is this process's ``ru_maxrss``.
"""

from __future__ import annotations

import contextvars
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import emit, metric, peak_rss_mb, scratch_database, seed_droplets, simulator_process

SAGAS = int(os.environ.get("BENCH_CONCURRENT_SAGAS", "200"))
SCALE = 0.1


def main() -> None:
    with simulator_process(
        time_scale=SCALE, rate_limit_per_minute=1_000_000, rate_limit_per_hour=10_000_000
    ) as sim:
        droplets = seed_droplets(sim, SAGAS, "bench-concurrent")
        with scratch_database(f"bench_concurrency_{os.getpid()}") as url:
            os.environ.update(
                {
                    "SAGAS_DATABASE_URL": url,
                    "SAGAS_HOME": "/tmp/bench-sagas",
                    "SAGAS_DO_API_URL": sim,
                    "SAGAS_DO_TOKEN": f"bench-{uuid.uuid4().hex}",
                    "SAGAS_DO_RATE_LIMIT_PER_MINUTE": "1000000",
                    "SAGAS_DO_RATE_LIMIT_PER_HOUR": "10000000",
                    "SAGAS_DO_RATE_WINDOW_SCALE": str(SCALE),
                    "SAGAS_POLL_INITIAL_SECONDS": str(1.0 * SCALE),
                    "SAGAS_POLL_MAX_SECONDS": str(15.0 * SCALE),
                }
            )
            emit(run(droplets))


def run(droplets: list[int]) -> list[Any]:
    from prefect import flow

    from app.wiring import build_app
    from sagas.runner import Mode
    from tasks.prefect_steps import invoke_as_task

    rss_before = peak_rss_mb()

    @flow(name="bench-concurrent-sagas", log_prints=False)
    def many() -> dict[str, int]:
        app = build_app()

        def one(droplet_id: int) -> str:
            saga = app.provisioning().create_saga(
                "snapshot", {"droplet_id": droplet_id}, triggered_by="bench"
            )
            runner = app.runner(invoke_as_task)
            try:
                return runner.advance(saga.id, Mode.FULL).status.value
            finally:
                runner.services.close()

        with ThreadPoolExecutor(max_workers=len(droplets), thread_name_prefix="saga") as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, d) for d in droplets]
            statuses = [f.result() for f in futures]
        counts: dict[str, int] = {}
        for s in statuses:
            counts[s] = counts.get(s, 0) + 1
        return counts

    t0 = time.perf_counter()
    counts = many()
    wall = time.perf_counter() - t0
    peak = peak_rss_mb()
    outcomes = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    detail = (
        f"{len(droplets)} sagas: {outcomes}; RSS before the flow {rss_before:.0f} MB;"
        f" simulator time_scale {SCALE}, rate limit lifted"
    )
    return [
        metric("concurrency.peak_rss_mb", peak, "MB", "<=", 500, detail),
        metric(
            "concurrency.wall_s",
            wall,
            "s",
            detail=f"{len(droplets)} snapshot sagas at once, steps as task runs",
        ),
        metric("concurrency.completed", counts.get("completed", 0), "sagas", ">=", len(droplets)),
    ]


if __name__ == "__main__":
    main()
