"""What the shared rate budget costs one process: requests per second through the budget kept in
Postgres (``SharedRateBudget`` + ``PostgresBudgetStore``) over the per-process ``RateBudget``.

One process, 16 threads sending ``GET /v2/droplets/{id}`` through ``DigitalOceanClient`` (built by
``from_settings``, with or without the store) to the simulator in its own process. Runs alternate
(local, shared, shared, local, ...), each with a fresh token; the ratio is the median of the
per-pair ratios.

- **saturated** (the row with the target): the simulator enforces 250 requests a minute at
  ``time_scale`` ``SCALE`` (the client's budget is told the same), so the budget is what holds the
  process back, as it is whenever the rate matters. Each run times ``3 * 250 + 1`` requests from
  the first request's start to the last one's answer: three whole windows.
- **unsaturated**: the limit lifted far beyond what the process can send; each run counts the
  requests answered in ``SECONDS`` of real time: the budget's own cost per request.

429s are counted by the simulator; there must be none.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import httpx

from benchmarks.common import (
    emit,
    median,
    metric,
    scratch_database,
    seed_droplets,
    simulator_counters,
    simulator_process,
)

SCALE = float(os.environ.get("BENCH_BUDGET_SCALE", "0.05"))
PAIRS = int(os.environ.get("BENCH_BUDGET_PAIRS", "3"))
FREE_PAIRS = int(os.environ.get("BENCH_BUDGET_FREE_PAIRS", "5"))  # short runs, noisier: more of them
THREADS = 16
LIMIT = 250
WINDOWS = 3
SECONDS = float(os.environ.get("BENCH_BUDGET_SECONDS", "3"))
LIFTED = 10_000_000


def run_once(sim_url: str, droplet: int, shared: bool, *, saturated: bool) -> float:
    """Requests per second one process achieved."""
    from sagas.digitalocean.client import DigitalOceanClient
    from sagas.ledger.database import engine_for
    from sagas.ratebudget_pg import PostgresBudgetStore
    from sagas.settings import TokenPurpose, load_settings

    limit = LIMIT if saturated else LIFTED
    settings = load_settings(
        do_token=f"bench-budget-{uuid.uuid4().hex}",
        do_rate_limit_per_minute=limit,
        do_rate_limit_per_hour=limit * 20,
    )
    store = PostgresBudgetStore(engine_for(settings)) if shared else None
    client = DigitalOceanClient.from_settings(settings, TokenPurpose.READ, budget_store=store)
    target = WINDOWS * LIMIT + 1 if saturated else None
    answered: list[tuple[float, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def spend() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            client.get_droplet(droplet)
            with lock:
                answered.append((started, time.perf_counter()))
                if target is not None and len(answered) >= target:
                    stop.set()

    # Daemons: after the stop, a thread still waiting for the budget sends one last request of
    # this run's token, which no later run shares.
    threads = [threading.Thread(target=spend, daemon=True) for _ in range(THREADS)]
    begun = time.perf_counter()
    for thread in threads:
        thread.start()
    if target is None:
        time.sleep(SECONDS)
        stop.set()
        with lock:
            return sum(1 for _, end in answered if end <= begun + SECONDS) / SECONDS
    stop.wait(timeout=WINDOWS * 60 * SCALE * 3 + 30)
    with lock:
        done = sorted(answered, key=lambda a: a[1])[:target]
    first = min(start for start, _ in done)
    return len(done) / (done[-1][1] - first)


def alternate(
    sim_url: str, droplet: int, pairs: int, *, saturated: bool
) -> tuple[list[float], list[float], list[float]]:
    local: list[float] = []
    shared: list[float] = []
    ratios: list[float] = []
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        rates = {mode: run_once(sim_url, droplet, mode, saturated=saturated) for mode in order}
        local.append(rates[False])
        shared.append(rates[True])
        ratios.append(rates[True] / rates[False])
    return local, shared, ratios


def main() -> None:
    with simulator_process(
        time_scale=SCALE, rate_limit_per_minute=LIMIT, rate_limit_per_hour=LIMIT * 20
    ) as sim_url:
        [droplet] = seed_droplets(sim_url, 1, "budget")
        with scratch_database(f"bench_budget_{os.getpid()}") as url:
            os.environ.update(
                {
                    "SAGAS_DATABASE_URL": url,
                    "SAGAS_HOME": "/tmp/bench-sagas",
                    "SAGAS_DO_API_URL": sim_url,
                    "SAGAS_DO_RATE_WINDOW_SCALE": str(SCALE),
                    "SAGAS_DO_TIMEOUT_SECONDS": "10",
                }
            )
            local, shared, ratios = alternate(sim_url, droplet, PAIRS, saturated=True)
            saturated_429 = simulator_counters(sim_url)["responses_429"]
            with httpx.Client(base_url=sim_url, timeout=10) as control:
                control.post(
                    "/_sim/config", json={"rate_limit_per_minute": LIFTED, "rate_limit_per_hour": LIFTED * 20}
                ).raise_for_status()
            free_local, free_shared, free_ratios = alternate(sim_url, droplet, FREE_PAIRS, saturated=False)
            total_429 = simulator_counters(sim_url)["responses_429"]

    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values)

    window = 60 * SCALE
    emit(
        [
            metric(
                "scale.budget_overhead_ratio",
                median(ratios),
                "x",
                ">=",
                0.95,
                f"saturated, 250 req/min at time_scale {SCALE} (a minute is {window:.1f} s), {THREADS} threads,"
                f" {WINDOWS * LIMIT + 1} requests a run; median of {PAIRS} interleaved pairs"
                f" (ratios {listed(ratios)}); shared {listed(shared)} req/s vs per-process {listed(local)} req/s"
                f" (the limit allows {LIMIT / window:.1f} req/s)",
            ),
            metric(
                "scale.budget_overhead_ratio_unsaturated",
                median(free_ratios),
                "x",
                ">=",
                0.95,
                f"limit lifted, {SECONDS:.0f} s a run, {THREADS} threads; median of {FREE_PAIRS} interleaved pairs"
                f" (ratios {listed(free_ratios)}); shared {listed(free_shared)} req/s vs per-process"
                f" {listed(free_local)} req/s",
            ),
            metric(
                "scale.budget_http_429",
                float(total_429),
                "count",
                "<=",
                0,
                f"{saturated_429} while saturated",
            ),
        ]
    )


if __name__ == "__main__":
    main()
