"""``scripts/reliability``: the reliability scenarios at scale, outside pytest."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from sagas.ledger.database import dispose_engines, engine_for, normalise_url
from sagas.ledger.store import Ledger
from sagas.settings import Settings, load_settings
from tests.conftest import REPO, SAGAS_ENV, TOKEN, _server_url, _with_database
from tests.reliability import harness
from tests.reliability.harness import CaseResult, Sim

SECTIONS = ("crash", "cancel", "faults", "storm", "race", "db", "input")


@contextmanager
def scratch_databases(count: int) -> Iterator[list[str]]:
    """One database per worker: simulators number droplets alike, and a droplet's lock is its id."""
    server = normalise_url(_server_url()).replace("postgresql+psycopg://", "postgresql://")
    names = [f"sagas_reliability_{os.getpid()}_{i}" for i in range(count)]
    with psycopg.connect(server, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
    urls = [_with_database(server, name) for name in names]
    try:
        yield urls
    finally:
        dispose_engines(urls)  # these only: the test session's own engine stays in use
        with psycopg.connect(server, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Worker:
    """A simulator and a ledger database of its own."""

    sim: Sim
    database_url: str
    base_env: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "SAGAS_DATABASE_URL": self.database_url,
            "SAGAS_DO_API_URL": self.sim.base_url,
        }

    @property
    def settings(self) -> Settings:
        return load_settings(do_api_url=self.sim.base_url, database_url=self.database_url)

    @property
    def ledger(self) -> Ledger:
        return Ledger(engine_for(self.settings))

    def fresh_ledger(self) -> Ledger:
        ledger = self.ledger
        harness.truncate(ledger)
        return ledger


def _report(title: str, results: list[CaseResult], line: str | None = None) -> None:
    for r in sorted(results, key=lambda r: r.name):
        if not r.verdict.survived:
            print(f"  FAILED {r.name}: {r.verdict.detail}", flush=True)
    took = sum(r.seconds for r in results)
    print(f"{title}: {line or harness.summary_line(results)} ({took:.0f}s of case time)", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/reliability", description=__doc__)
    parser.add_argument("--scale", type=int, default=1, help="how much larger than CI (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="replay a fault storm (default: random)")
    parser.add_argument("--workers", type=int, default=6, help="matrix cases run side by side")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--verbose", action="store_true", help="show the runners' warnings too")
    parser.add_argument(
        "--outcomes", default=None, help="write each case's saga outcome to this JSON file (to compare runs)"
    )
    args = parser.parse_args(argv)
    if not args.verbose:
        # Runners in this process (storm, cancel and fault matrices) warn of every failure they were
        # made to meet; the verdicts say what matters.
        logging.getLogger("sagas").setLevel(logging.ERROR)
    scale = max(args.scale, 1)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    print(f"reliability: scale {scale}, seed {seed}, sections {','.join(s for s in SECTIONS if s in only)}")

    results: list[CaseResult] = []
    matrices: dict[str, list[CaseResult]] = {}  # "cancel" and "fault": reported on lines of their own
    count = max(args.workers, 1)
    with scratch_databases(count) as urls, tempfile.TemporaryDirectory(prefix="sagas-reliability-") as home:
        base_env = {**SAGAS_ENV, "SAGAS_DO_RATE_WINDOW_SCALE": "0.02", "SAGAS_HOME": str(Path(home) / "home")}
        for key in [k for k in os.environ if k.startswith("SAGAS_")]:
            del os.environ[key]
        os.environ.update({**base_env, "SAGAS_DATABASE_URL": urls[0]})
        with harness.simulators(count, TOKEN) as sims:
            workers = {id(sim): Worker(sim, url, base_env) for sim, url in zip(sims, urls, strict=True)}
            first = workers[id(sims[0])]
            os.environ["SAGAS_DO_API_URL"] = first.sim.base_url

            def crash(case: harness.CrashCase, sim: Sim) -> CaseResult:
                w = workers[id(sim)]
                return harness.run_crash_case(case, sim, w.fresh_ledger(), w.settings, w.env)

            def cancel(case: harness.CancelCase, sim: Sim) -> CaseResult:
                w = workers[id(sim)]
                return harness.run_cancel_case(case, sim, w.fresh_ledger(), w.settings)

            def fault(case: harness.FaultCase, sim: Sim) -> CaseResult:
                w = workers[id(sim)]
                return harness.run_fault_case(case, sim, w.fresh_ledger(), w.settings)

            if "crash" in only:
                cases = harness.crash_cases() * scale
                started = time.monotonic()
                section = harness.run_cases_in_parallel(cases, crash, sims)
                _report(f"crash matrix ({time.monotonic() - started:.0f}s)", section)
                results += section
            if "cancel" in only:
                started = time.monotonic()
                section = harness.run_cases_in_parallel(harness.cancel_cases() * scale, cancel, sims)
                line = harness.held_line("cancel", section)
                _report(f"cancel matrix ({time.monotonic() - started:.0f}s)", section, line)
                matrices["cancel"] = section
            if "faults" in only:
                started = time.monotonic()
                try:
                    cases = harness.fault_cases(first.sim, first.fresh_ledger, first.settings) * scale
                except Exception as exc:  # a kind no longer completes unfaulted: nothing to fault
                    verdict = harness.Verdict(False, detail=f"clean run: {type(exc).__name__}: {exc}")
                    section = [CaseResult("fault matrix clean runs", verdict, time.monotonic() - started)]
                else:
                    took = time.monotonic() - started
                    print(f"fault matrix: {len(cases)} cases from clean runs ({took:.0f}s)", flush=True)
                    section = harness.run_cases_in_parallel(cases, fault, sims)
                line = harness.held_line("fault", section)
                _report(f"fault matrix ({time.monotonic() - started:.0f}s)", section, line)
                matrices["fault"] = section
            if "storm" in only:
                started = time.monotonic()
                section = harness.fault_storm(
                    first.sim, first.fresh_ledger(), first.settings, 20 * scale, seed
                )
                _report(f"fault storm, seed {seed} ({time.monotonic() - started:.0f}s)", section)
                results += section
            if "race" in only:
                started = time.monotonic()
                section = harness.racing_runners(
                    first.sim, first.fresh_ledger(), first.settings, first.env, 10 * scale
                )
                _report(f"racing runners ({time.monotonic() - started:.0f}s)", section)
                results += section
            if "db" in only:
                started = time.monotonic()
                section = harness.database_faults(first.sim, first.fresh_ledger(), first.settings, 3 * scale)
                section += harness.ledger_blips(first.sim, first.fresh_ledger(), first.settings, 2 * scale)
                _report(f"database faults ({time.monotonic() - started:.0f}s)", section)
                results += section
        if "input" in only:
            started = time.monotonic()
            files = ["tests/reliability/test_bad_input.py", "tests/reliability/test_secrets.py"]
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                cwd=REPO,
                env={**os.environ, "RELIABILITY_EXAMPLES": str(200 * scale)},
                check=False,
            )
            verdict = harness.Verdict(done.returncode == 0, detail=f"pytest exited {done.returncode}")
            section = [CaseResult("bad input and secrets (pytest)", verdict, time.monotonic() - started)]
            _report("bad input and secrets", section)
            results += section
    if results or not matrices:
        print(harness.summary_line(results), flush=True)
    for what, section in matrices.items():
        print(harness.held_line(what, section), flush=True)
    everything = results + [r for section in matrices.values() for r in section]
    if args.outcomes:
        import json

        with open(args.outcomes, "w") as sink:
            json.dump({r.name: r.verdict.outcome for r in everything}, sink, indent=1, sort_keys=True)
    ok = all(r.verdict.survived and not r.verdict.leaked and not r.verdict.doubled for r in everything)
    return 0 if ok and everything else 1
