"""Ledger benchmarks, no Prefect involved.

* ``ledger_cost``: what the runner costs per step, ``Runner.advance`` over a saga of no-op steps
  (claim, every fenced write, release; steps called directly), against one bare durable commit
  (psycopg: INSERT, COMMIT) on the same server, same database, same TCP loopback, measured
  interleaved in the same run.
* ``ledger_scale``: ``Ledger.list_sagas`` with status / kind / deployment filters, limit 50, over
  1,000,000 saga rows bulk-loaded with INSERT ... SELECT generate_series into a scratch database;
  and one ``sagas metrics`` scrape (every ledger query of ``sagas.metrics``, rendered) over the same
  rows, with a compensation_failed step row for each compensation_failed saga.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import text

from benchmarks.common import Metric, emit, median, metric, percentile, scratch_database


def _ledger(url: str):  # type: ignore[no-untyped-def]
    from sagas.ledger.database import engine_for
    from sagas.ledger.store import Ledger
    from sagas.settings import load_settings

    settings = load_settings(database_url=url)
    return Ledger(engine_for(settings)), settings


def ledger_cost(steps_per_saga: int = 50, sagas: int = 21, commits_per_round: int = 100) -> list[Metric]:
    from benchmarks.catalog import bench_catalog, noop_names
    from sagas.runner import Runner
    from sagas.services import Services

    catalog = bench_catalog()
    names = noop_names(steps_per_saga)
    with scratch_database(f"bench_ledger_{os.getpid()}") as url:
        ledger, settings = _ledger(url)
        services = Services(settings)
        in_ledger = _time_ledger_calls(ledger)
        runner = Runner(ledger, catalog, services)  # steps called directly: no Prefect here
        bare = psycopg.connect(url)
        bare.execute("CREATE TABLE bare_commit (id bigserial PRIMARY KEY, payload text NOT NULL)")
        bare.commit()
        saga_times: list[float] = []
        ledger_times: list[float] = []
        commit_times: list[float] = []
        for round_no in range(sagas):
            # Bare durable commits, between saga rounds so both see the same machine state.
            for _ in range(commits_per_round):
                t0 = time.perf_counter()
                bare.execute("INSERT INTO bare_commit (payload) VALUES (%s)", ("x" * 32,))
                bare.commit()
                commit_times.append(time.perf_counter() - t0)
            saga, _ = ledger.create_saga(catalog.new_saga("test", {}, steps=names, triggered_by="bench"))
            in_ledger.clear()
            t0 = time.perf_counter()
            done = runner.advance(saga.id)
            elapsed = time.perf_counter() - t0
            assert done.status.value == "completed", done
            if round_no:  # the first saga warms caches, connections and prepared statements
                saga_times.append(elapsed)
                ledger_times.append(sum(in_ledger))
        bare.close()
        services.close()
    per_step = median(ledger_times) / steps_per_saga
    runner_per_step = median(saga_times) / steps_per_saga
    per_commit = median(commit_times)
    return [
        metric(
            "ledger.writes_per_step_in_commits",
            per_step / per_commit,
            "x",
            "<=",
            2.5,
            f"time in Ledger calls during Runner.advance of a {steps_per_saga}-step no-op saga"
            f" (claim to release, per-saga reads included): {per_step * 1000:.2f} ms/step (median of"
            f" {len(ledger_times)} sagas) vs bare INSERT+COMMIT {per_commit * 1000:.2f} ms (median of"
            f" {len(commit_times)})",
        ),
        metric(
            "ledger.runner_per_step_in_commits",
            runner_per_step / per_commit,
            "x",
            detail=f"the whole Runner.advance, ledger and runner: {runner_per_step * 1000:.2f} ms/step",
        ),
        metric("ledger.bare_commit_ms", per_commit * 1000, "ms"),
    ]


def _time_ledger_calls(ledger: Any) -> list[float]:
    """Wrap this ledger object's public methods so each call's duration lands in the returned list."""
    spent: list[float] = []

    def timed(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)

        return call

    for name in dir(ledger):
        if not name.startswith("_") and callable(getattr(ledger, name)):
            setattr(ledger, name, timed(getattr(ledger, name)))
    return spent


KINDS = ["snapshot", "suspend", "resume", "update", "rollback", "offboard", "provision", "test"]
# Independent random kind and status, realistic skew: most completed, 0.1% need an operator.
STATUS_SQL = (
    "CASE WHEN r < 0.001 THEN 'compensation_failed' WHEN r < 0.003 THEN 'failed'"
    " WHEN r < 0.053 THEN 'rolled_back' WHEN r < 0.054 THEN 'running' ELSE 'completed' END"
)


def ledger_scale(rows: int = 1_000_000, queries_per_filter: int = 60) -> list[Metric]:
    from sagas.models import SagaStatus

    with scratch_database(f"bench_ledger_scale_{os.getpid()}") as url:
        ledger, _settings = _ledger(url)  # migrates the schema
        engine = ledger._engine
        t0 = time.perf_counter()
        kinds = "ARRAY[" + ",".join(f"'{k}'" for k in KINDS) + "]"
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO saga_runs (id, kind, step_names, definition_version, inputs, context,"
                    " status, deployment_id, resource, triggered_by, created_at, updated_at, started_at,"
                    " finished_at)"
                    " SELECT gen_random_uuid(), (" + kinds + ")[1 + floor(random() * 8)::int],"
                    " ARRAY['create_droplet_snapshot'], '1', jsonb_build_object('droplet_id', g),"
                    " jsonb_build_object('create_droplet_snapshot', jsonb_build_object('snapshot_id', g)),"
                    f" {STATUS_SQL},"
                    " CASE WHEN g % 3 = 0 THEN NULL ELSE 'dep-' || (g % 2000) END,"
                    " 'droplet:' || g, 'bench',"
                    " now() - make_interval(secs => (:rows - g) * 30), now(), now(), now()"
                    " FROM (SELECT g, random() AS r FROM generate_series(1, :rows) AS g) AS s"
                ),
                {"rows": rows},
            )
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE saga_runs"))
        load_seconds = time.perf_counter() - t0
        filters: list[dict[str, object]] = [
            {},
            {"status": SagaStatus.COMPLETED},
            {"status": SagaStatus.COMPENSATION_FAILED},
            {"status": SagaStatus.FAILED, "kind": "update"},
            {"kind": "snapshot"},
            {"kind": "offboard", "status": SagaStatus.ROLLED_BACK},
            {"deployment_id": "dep-17"},
            {"deployment_id": "dep-1234", "status": SagaStatus.ROLLED_BACK},
            {"deployment_id": "dep-99", "kind": "provision"},
            {"status": SagaStatus.RUNNING, "kind": "resume", "deployment_id": "dep-3"},
        ]
        rng = random.Random(7)
        for f in filters:  # warm the buffers and the statement cache
            ledger.list_sagas(limit=50, **f)
        timings: list[float] = []
        per_filter: dict[str, float] = {}
        plan = [f for f in filters for _ in range(queries_per_filter)]
        rng.shuffle(plan)
        for f in plan:
            t0 = time.perf_counter()
            ledger.list_sagas(limit=50, **f)
            elapsed = time.perf_counter() - t0
            timings.append(elapsed)
            key = ",".join(f"{k}={getattr(v, 'value', v)}" for k, v in f.items()) or "(none)"
            per_filter[key] = max(per_filter.get(key, 0.0), elapsed)
        worst = max(per_filter, key=lambda k: per_filter[k])
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM saga_runs")).scalar_one()
        scrapes, unfinished = _scrape_times(engine)
    return [
        metric(
            "ledger_scale.list_p50_ms",
            percentile(timings, 0.5) * 1000,
            "ms",
            detail=f"{count:,} rows loaded+analyzed in {load_seconds:.0f}s; {len(filters)} filter mixes",
        ),
        metric(
            "ledger_scale.list_p99_ms",
            percentile(timings, 0.99) * 1000,
            "ms",
            "<=",
            10,
            f"{len(timings)} queries; slowest mix: {worst} ({per_filter[worst] * 1000:.1f} ms max)",
        ),
        metric(
            "ledger_scale.metrics_scrape_ms",
            median(scrapes) * 1000,
            "ms",
            "<=",
            100,
            f"`sagas metrics` (all its ledger queries, rendered) over {count:,} sagas, {unfinished:,} of"
            f" them unfinished or waiting for an operator: median of {len(scrapes)}, max"
            f" {max(scrapes) * 1000:.1f} ms",
        ),
    ]


def _scrape_times(engine: Any, scrapes: int = 30) -> tuple[list[float], int]:
    """One `sagas metrics` scrape, timed ``scrapes`` times after a warm-up; and how many sagas it counted."""
    from prometheus_client import generate_latest

    from sagas.ledger.metrics import OPEN_STATUSES, MetricsStore
    from sagas.metrics import registry_for

    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO saga_step_results (saga_id, step_idx, step_name, status, attempts, started_at,"
                " completed_at, compensation_attempts, error)"
                " SELECT id, 0, 'create_droplet_snapshot', 'compensation_failed', 1, created_at, created_at,"
                " 5, 'bench' FROM saga_runs WHERE status = 'compensation_failed'"
            )
        )
        conn.execute(text("ANALYZE saga_step_results"))
        unfinished = conn.execute(
            text("SELECT count(*) FROM saga_runs WHERE status = ANY(:s)"),
            {"s": [s.value for s in OPEN_STATUSES]},
        ).scalar_one()
    registry = registry_for(MetricsStore(engine), kinds=KINDS, steps=["create_droplet_snapshot"])
    generate_latest(registry)
    times = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - t0)
    return times, int(unfinished)


def main() -> None:
    which = sys.argv[1]
    metrics = (
        ledger_cost()
        if which == "cost"
        else ledger_scale(int(os.environ.get("BENCH_LEDGER_ROWS", "1000000")))
    )
    emit(metrics)


if __name__ == "__main__":
    _ = uuid
    main()
