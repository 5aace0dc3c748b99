"""Orchestration overhead: a saga of N no-op steps through our flow, against N plain Prefect tasks.

Both run in this process against the same Prefect server (on Postgres), alternating, after
warm-up. "Our flow" is the product's ``test`` flow (``flows.saga_flow.saga_flow("test", ...)``:
``run_saga_flow``, the ledger, the runner, each step a Prefect task via ``invoke_as_task``, the saga
artifact and event) with the catalog swapped for one that also has ``noop_0`` .. ``noop_<N-1>``. The plain flow
calls N distinct ``@task`` no-ops with the same task options (no cache, no persisted result).
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import emit, median, metric, scratch_database

N = int(os.environ.get("BENCH_OVERHEAD_STEPS", "20"))
ROUNDS = int(os.environ.get("BENCH_OVERHEAD_ROUNDS", "12"))


def main() -> None:
    with scratch_database(f"bench_overhead_{os.getpid()}") as url:
        os.environ.update(
            {"SAGAS_DATABASE_URL": url, "SAGAS_DO_TOKEN": "bench", "SAGAS_HOME": "/tmp/bench-sagas"}
        )
        emit(run())


def run() -> list[Any]:
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from app.wiring import use_catalog
    from benchmarks.catalog import bench_catalog, noop_names
    from flows.saga_flow import saga_flow

    use_catalog(bench_catalog)  # every App built from here on knows noop_0 .. noop_<N-1>
    # The product's test flow, built by the same factory, offering the benchmark's steps too.
    test_saga = saga_flow("test", "Run registered steps (benchmark).", bench_catalog())
    names = noop_names(N)

    def make_task(i: int) -> Any:
        def noop() -> dict[str, Any]:
            return {}

        noop.__name__ = f"noop_{i}"
        return task(
            name=f"noop_{i}", cache_policy=NO_CACHE, persist_result=False, retries=0, log_prints=False
        )(noop)

    plain_tasks = [make_task(i) for i in range(N)]

    @flow(name="plain-noops", log_prints=False)
    def plain_flow() -> int:
        for t in plain_tasks:
            t()
        return N

    def ours() -> float:
        t0 = time.perf_counter()
        result = test_saga(steps=names)
        elapsed = time.perf_counter() - t0
        assert result["status"] == "completed", result
        return elapsed

    def plain() -> float:
        t0 = time.perf_counter()
        plain_flow()
        return time.perf_counter() - t0

    def measure() -> tuple[float, float]:
        for _ in range(2):  # warm-up: imports, connections, prepared statements, server caches
            plain()
            ours()
        plain_times, our_times = [], []
        for i in range(ROUNDS):
            if i % 2:
                our_times.append(ours())
                plain_times.append(plain())
            else:
                plain_times.append(plain())
                our_times.append(ours())
        return median(plain_times), median(our_times)

    # Prefect's flow-run heartbeat thread sleeps in 1 s slices and is joined when the flow ends:
    # with the default settings every flow run, ours or plain, waits up to a second for it. That
    # constant would hide any cost of ours, so the target is measured with heartbeats off.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        p, o = measure()
    p_default, o_default = measure()
    return [
        metric(
            "overhead.saga_vs_plain_ratio",
            o / p,
            "x",
            "<=",
            1.10,
            f"{N} no-op steps, flow heartbeats off, median of {ROUNDS}: saga flow {o * 1000:.0f} ms,"
            f" plain flow {p * 1000:.0f} ms; {(o - p) / N * 1000:.1f} ms extra per step"
            f" ({p / N * 1000:.1f} ms per plain task)",
        ),
        metric(
            "overhead.saga_vs_plain_ratio_default_settings",
            o_default / p_default,
            "x",
            detail=f"Prefect's default settings (heartbeat every 180 s): saga flow {o_default * 1000:.0f} ms,"
            f" plain flow {p_default * 1000:.0f} ms",
        ),
    ]


if __name__ == "__main__":
    main()
