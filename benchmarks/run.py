"""Run every benchmark (each in its own process) and print one table: name, value, target, PASS|MISS.

Usage: ``scripts/bench [--quick] [WORD ...]`` (or ``python -m benchmarks.run``); words pick the
benchmarks whose label contains one (``scripts/bench overhead``). Results also go to
``benchmarks/results/latest.json`` with the machine's description.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PG_SERVER, PYTHON, REPO, prefect_server


def machine() -> dict[str, str]:
    import psycopg

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    with psycopg.connect(PG_SERVER) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    prefect = subprocess.run(
        [PYTHON, "-c", "import prefect; print(prefect.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "memory": mem[1].split()[1] if len(mem) > 1 else "?",
        "cpu": cpu,
        "python": platform.python_version(),
        "prefect": prefect,
        "postgres": pg,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def run_module(
    args: list[str], env: dict[str, str], timeout: float
) -> tuple[list[dict[str, Any]], float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, "-m", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])["metrics"], elapsed, ""
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return [], elapsed, f"{' '.join(args)} failed (exit {proc.returncode}):\n{tail}"


def fmt(value: float) -> str:
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def main() -> int:
    quick = "--quick" in sys.argv
    env_quick = (
        {
            "BENCH_LEDGER_ROWS": "100000",
            "BENCH_FLEET_DROPLETS": "60",
            "BENCH_CONCURRENT_SAGAS": "50",
            "BENCH_WORKERS_DROPLETS": "300",
        }
        if quick
        else {}
    )
    started = time.perf_counter()
    info = machine()
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    timings: dict[str, float] = {}

    # ``scripts/bench overhead fleet``: only the benchmarks whose label contains one of the words.
    only = [a for a in sys.argv[1:] if not a.startswith("-")]

    def bench(label: str, args: list[str], env: dict[str, str], timeout: float = 600) -> None:
        if only and not any(word in label for word in only):
            return
        print(f"... {label}", file=sys.stderr, flush=True)
        metrics, elapsed, error = run_module(args, {**env_quick, **env}, timeout)
        timings[label] = elapsed
        rows.extend(metrics)
        if error:
            failures.append(error)

    bench("ledger cost", ["benchmarks.ledger_bench", "cost"], {})
    bench("ledger at scale", ["benchmarks.ledger_bench", "scale"], {})
    bench("budget overhead", ["benchmarks.budget"], {})
    needs_prefect = (
        "orchestration overhead",
        "fleet",
        "fleet baseline",
        "concurrency",
        "fleet workers rollback",
    )
    prefect: contextlib.AbstractContextManager[dict[str, str]]
    if only and not any(word in label for label in needs_prefect for word in only):
        prefect = contextlib.nullcontext({})
    else:
        prefect = prefect_server(f"bench_prefect_{os.getpid()}")
    with prefect as prefect_env:
        bench("orchestration overhead", ["benchmarks.overhead"], prefect_env)
        bench("fleet", ["benchmarks.fleet", "product"], prefect_env)
        bench("fleet baseline", ["benchmarks.fleet", "baseline"], prefect_env)
        bench("concurrency", ["benchmarks.concurrency"], prefect_env)
        bench("fleet workers rollback", ["benchmarks.workers"], prefect_env, timeout=900)
    total = time.perf_counter() - started

    width = max(len(r["name"]) for r in rows) if rows else 10
    print(
        f"\nmachine: {info['nproc']} cores, {info['memory']} RAM, {info['cpu']}; Python {info['python']},"
        f" Prefect {info['prefect']}, Postgres {info['postgres']}; load before {info['load_before']}"
    )
    print(f"{'name':<{width}}  {'value':>10}  {'unit':<5}  {'target':<8}  result")
    for r in rows:
        verdict = "" if r["ok"] is None else ("PASS" if r["ok"] else "MISS")
        print(f"{r['name']:<{width}}  {fmt(r['value']):>10}  {r['unit']:<5}  {r['target']:<8}  {verdict}")
    print("\ndetails:")
    for r in rows:
        if r["detail"]:
            print(f"  {r['name']}: {r['detail']}")
    print(
        "  time per benchmark: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f"; total {total:.0f}s"
    )
    for failure in failures:
        print(f"\nFAILED: {failure}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / ("partial.json" if only else "latest.json")).write_text(
        json.dumps({"machine": info, "metrics": rows, "timings": timings, "quick": quick}, indent=2)
    )
    missed = [r["name"] for r in rows if r["ok"] is False]
    return 1 if failures else (2 if missed else 0)


if __name__ == "__main__":
    sys.exit(main())
