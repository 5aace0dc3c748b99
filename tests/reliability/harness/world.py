"""The world a reliability case runs in, and how it is judged.

A case runs against a *running* simulator (a base URL) and a real Postgres ledger, so the same
code runs under pytest (the session's simulator) and from ``scripts/reliability`` (several
simulators, one per worker, so cases can run side by side without seeing each other's world).

- **leaked**: a resource the simulator holds that the ledger does not account for (or one the
  ledger says exists that is missing); **doubled**: a create applied more than once
  (``writes["snapshot:<name>"]``, ``droplet:<name>``, ``dns:A:<fqdn>`` above 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from sagas.errors import LedgerError, SagaBusyError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun, SagaStatus, StepResult, StepStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import REPO
from tests.test_kinds import expected_after, world

FIXED_KINDS = [k for k in catalog().kind_names if catalog().kind(k).steps is not None]

ACTIONS = r"^/v2/droplets/\d+/actions$"
DROPLETS = r"^/v2/droplets$"
DROPLET = r"^/v2/droplets/\d+$"
RECORDS = r"^/v2/domains/[^/]+/records$"
RECORD = r"^/v2/domains/[^/]+/records/\d+$"
SNAPSHOT = r"^/v2/snapshots/[^/]+$"


@dataclass(frozen=True)
class Write:
    """One provider write: how to recognise its request, and its key in ``counters.writes``."""

    method: str
    path: str
    counter_prefix: str = ""


@dataclass(frozen=True)
class StepWrites:
    execute: Write
    progress: str | None  # the output field a step checkpoints right after its write, if any
    undo: Write | None  # None: a pivot, no undo


# Read off tasks/*.py: what each step writes, forward and back.
STEP_WRITES: dict[str, StepWrites] = {
    "create_droplet": StepWrites(
        Write("POST", DROPLETS, "droplet:"), "droplet_id", Write("DELETE", DROPLET, "delete_droplet:")
    ),
    "create_dns_record": StepWrites(
        Write("POST", RECORDS, "dns:A:"), "record_id", Write("DELETE", RECORD, "delete_dns_record:")
    ),
    "delete_dns_record": StepWrites(
        Write("DELETE", RECORD, "delete_dns_record:"), None, Write("POST", RECORDS, "dns:A:")
    ),
    "create_droplet_snapshot": StepWrites(
        Write("POST", ACTIONS, "snapshot:"), "action_id", Write("DELETE", SNAPSHOT, "delete_snapshot:")
    ),
    "power_off_droplet": StepWrites(
        Write("POST", ACTIONS, "action:shutdown:"), "shutdown_id", Write("POST", ACTIONS, "action:power_on:")
    ),
    "power_on_droplet": StepWrites(
        Write("POST", ACTIONS, "action:power_on:"), "power_on_id", Write("POST", ACTIONS, "action:power_off:")
    ),
    "resize_droplet": StepWrites(
        Write("POST", ACTIONS, "action:resize:"), "resize_id", Write("POST", ACTIONS, "action:resize:")
    ),
    "restore_droplet": StepWrites(Write("POST", ACTIONS, "action:restore:"), "restore_id", None),
    "delete_droplet": StepWrites(Write("DELETE", DROPLET, "delete_droplet:"), None, None),
}
CREATE_PREFIXES = ("snapshot:arcadia-", "droplet:", "dns:A:www.")  # at most one apply each

DOMAIN = "example.com"  # the domain DNS steps of the storm and the races use
HOLD_SECONDS = 10.0  # a held request outlives the kill, the lease (3 s) and the recovery


# -- the simulator, seen from a test ------------------------------------------------------------


@dataclass
class Sim:
    """One simulator: its control client (``/_sim``) and its API with the tests' token."""

    base_url: str
    token: str
    control: httpx.Client = field(init=False)
    api: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.control = httpx.Client(base_url=self.base_url, timeout=10)
        self.api = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    def close(self) -> None:
        self.control.close()
        self.api.close()

    def reset(self, time_scale: float = 0.02) -> None:
        """An empty account, every timing back to its default (a case before may have slowed one)."""
        from sagas.digitalocean.simulator import SimulatorConfig

        self.control.post("/_sim/reset").raise_for_status()
        defaults = SimulatorConfig(time_scale=time_scale).model_dump()
        self.control.post("/_sim/config", json=defaults).raise_for_status()

    def configure(self, **patch: Any) -> None:
        self.control.post("/_sim/config", json=patch).raise_for_status()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """The journaled ``/v2`` requests after request number ``since``, in arrival order."""
        body = self.control.get("/_sim/requests", params={"since": since}).json()
        return list(body["requests"])

    def last_request(self) -> int:
        return int(self.control.get("/_sim/requests", params={"since": 2**62}).json()["last_seq"])

    def state(self) -> dict[str, Any]:
        return dict(self.control.get("/_sim/state").json())

    def writes(self) -> Counter[str]:
        return Counter(self.state()["counters"]["writes"])

    def add_faults(self, *rules: Mapping[str, Any]) -> None:
        self.control.post("/_sim/faults", json={"rules": list(rules)}).raise_for_status()

    def clear_faults(self) -> None:
        self.control.delete("/_sim/faults").raise_for_status()

    def fired(self) -> int:
        return sum(int(r["fired"]) for r in self.control.get("/_sim/faults").json()["rules"])

    def world(self) -> dict[str, Any]:
        return world(self.control, self.api)


@contextmanager
def simulators(count: int, token: str, time_scale: float = 0.02) -> Iterator[list[Sim]]:
    """``count`` fresh simulators, each in its own thread on an ephemeral port."""
    from sagas.digitalocean.simulator import SimulatorConfig, run_simulator_in_thread

    with ExitStack() as stack:
        sims = []
        for _ in range(count):
            running = stack.enter_context(run_simulator_in_thread(SimulatorConfig(time_scale=time_scale)))
            sim = Sim(running.base_url, token)
            stack.callback(sim.close)
            sims.append(sim)
        yield sims


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- the ledger side -------------------------------------------------------------------------------


def advance_until_terminal(
    ledger: Ledger, settings: Settings, saga_id: uuid.UUID, timeout: float = 60.0
) -> SagaRun:
    """What recovery does for one saga: advance it (waiting out a dead runner's lease) until it ends.

    A saga that stops in ``compensation_failed`` or ``failed`` is advanced again (an operator's
    ``sagas resume``), a bounded number of times; ledger blips are retried too.
    """
    deadline = time.monotonic() + timeout
    while True:
        saga = ledger.get_saga(saga_id)
        if saga.status.is_terminal or time.monotonic() > deadline:
            return saga
        services = Services(settings)
        try:
            Runner(ledger, catalog(), services).advance(saga_id)
        except SagaBusyError:
            time.sleep(0.2)
        except LedgerError:
            time.sleep(0.2)
        finally:
            services.close()


def truncate(ledger: Ledger) -> None:
    """Empty every ledger table (what the ``ledger`` fixture does before each test)."""
    from sqlalchemy import text

    with ledger._engine.begin() as conn:
        conn.execute(text("TRUNCATE saga_runs CASCADE"))


def steps_of(ledger: Ledger, saga_id: uuid.UUID) -> dict[int, StepResult]:
    return {row.step_idx: row for row in ledger.list_step_results(saga_id)}


# -- judging a world -------------------------------------------------------------------------------


@dataclass
class Verdict:
    survived: bool
    leaked: int = 0
    doubled: int = 0
    detail: str = ""
    outcome: str = ""  # the saga's final status, for comparing runs (``--outcomes``)


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> tuple[int, int, list[str]]:
    """(extra resources, missing or wrong ones, description)."""
    extra = missing = 0
    notes = []
    exp_d, act_d = expected["droplets"], actual["droplets"]
    for name in set(act_d) - set(exp_d):
        extra += 1
        notes.append(f"extra droplet {name}")
    for name, want in exp_d.items():
        if act_d.get(name) != want:
            missing += 1
            notes.append(f"droplet {name}: want {want}, have {act_d.get(name)}")
    for what in ("snapshots", "records"):
        want_c, have_c = Counter(map(str, expected[what])), Counter(map(str, actual[what]))
        for item, n in (have_c - want_c).items():
            extra += n
            notes.append(f"extra {what[:-1]} {item} x{n}")
        for item, n in (want_c - have_c).items():
            missing += n
            notes.append(f"missing {what[:-1]} {item} x{n}")
    return extra, missing, notes


def doubled_creates(writes: Mapping[str, int]) -> list[str]:
    return [f"{k} x{n}" for k, n in writes.items() if k.startswith(CREATE_PREFIXES) and n > 1]


def judge(
    sim: Sim,
    ledger: Ledger,
    saga_id: uuid.UUID,
    before: dict[str, Any],
    inputs: dict[str, Any],
    expect: SagaStatus,
) -> Verdict:
    """Does the simulator hold exactly what the ledger says, with nothing leaked or doubled?"""
    saga = ledger.get_saga(saga_id)
    rows = steps_of(ledger, saga_id)
    if saga.status is SagaStatus.ROLLED_BACK:
        expected = before
    else:
        done = [saga.step_names[i] for i, r in sorted(rows.items()) if r.status is StepStatus.COMPLETED]
        expected = expected_after([s for s in done if s in STEP_WRITES], before, saga, inputs)
    # A deleted snapshot lingers for a moment; a status flips after a lag: let the world settle.
    deadline = time.monotonic() + 5
    while True:
        actual = sim.world()
        extra, missing, notes = _diff(expected, actual)
        if not (extra or missing) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    doubled = doubled_creates(sim.writes())
    problems = list(notes) + [f"doubled {d}" for d in doubled]
    if saga.status is not expect:
        problems.insert(0, f"saga ended {saga.status.value} (want {expect.value}): {saga.error}")
    return Verdict(
        survived=not problems,
        leaked=extra,
        doubled=len(doubled),
        detail="; ".join(problems),
        outcome=saga.status.value,
    )


def cli(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class CaseResult:
    name: str
    verdict: Verdict
    seconds: float


def run_cases_in_parallel(
    cases: list[Any],
    run_one: Callable[[Any, Sim], CaseResult],
    sims: list[Sim],
) -> list[CaseResult]:
    """Each worker owns one simulator and takes cases from a shared queue."""
    queue = list(cases)
    lock = threading.Lock()
    results: list[CaseResult] = []

    def worker(sim: Sim) -> None:
        while True:
            with lock:
                if not queue:
                    return
                case = queue.pop(0)
            result = run_one(case, sim)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in sims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def seed(sim: Sim, name: str) -> int:
    return int(sim.control.post("/_sim/droplets", json={"name": name}).json()["droplet"]["id"])


def summary_line(results: list[CaseResult]) -> str:
    survived = sum(r.verdict.survived for r in results)
    leaked = sum(r.verdict.leaked for r in results)
    doubled = sum(r.verdict.doubled for r in results)
    return f"crash points: {survived}/{len(results)} survived, leaked: {leaked}, doubled: {doubled}"
