"""Machinery shared by the reliability tests and ``scripts/reliability``.

Everything here works against a *running* simulator (a base URL) and a real Postgres ledger, so the
same code runs under pytest (the session's simulator) and from the script (several simulators, one
per worker, so crash cases can run side by side without seeing each other's world).

Vocabulary:

- a **crash case** is (kind, step index, point). Points: ``before_write`` (the step's provider write is
  held by a ``latency`` fault; the runner is SIGKILLed while it waits, so the write never lands: a
  POST whose client vanished is dropped by the server when it reads the body), ``after_write``
  (``slow_response``: applied, reply held; killed once ``/_sim/state`` counts the write),
  ``after_ledger`` (killed once the step's ledger row shows what the write did), ``compensating``
  (the saga is the test kind running the kind's steps up to this one then ``fail``; the undo's write
  is held with ``latency`` and the runner killed while it waits).
- **leaked**: a resource the simulator holds that the ledger does not account for (or one the
  ledger says exists that is missing); **doubled**: a create applied more than once
  (``writes["snapshot:<name>"]``, ``droplet:<name>``, ``dns:A:<fqdn>`` above 1).
"""

from __future__ import annotations

import os
import random
import signal
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

from sagas.errors import LedgerError, SagaBusyError, SagaError
from sagas.ledger.store import Ledger
from sagas.models import Reversibility, SagaRun, SagaStatus, StepResult, StepStatus
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import REPO
from tests.test_kinds import expected_after, prepare, world

FIXED_KINDS = [k for k in catalog().kind_names if catalog().kind(k).steps is not None]
POINTS = ("before_write", "after_write", "after_ledger", "compensating")

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
        self.control.post("/_sim/reset").raise_for_status()
        self.control.post("/_sim/config", json={"time_scale": time_scale}).raise_for_status()

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
    return Verdict(survived=not problems, leaked=extra, doubled=len(doubled), detail="; ".join(problems))


# -- the crash matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrashCase:
    kind: str
    step: int
    point: str

    @property
    def step_name(self) -> str:
        return (catalog().kind(self.kind).steps or ())[self.step]

    def __str__(self) -> str:
        return f"{self.kind}[{self.step}:{self.step_name}]@{self.point}"


def _has_pivot(steps: list[str], inputs: Mapping[str, Any]) -> bool:
    return any(catalog().step(s).reversibility_for(inputs) is Reversibility.PIVOT for s in steps)


def crash_cases(kinds: list[str] | None = None, points: tuple[str, ...] = POINTS) -> list[CrashCase]:
    """Every (kind, step, point); ``compensating`` only where a failure after the step rolls back."""
    cases = []
    for kind in kinds or FIXED_KINDS:
        steps = list(catalog().kind(kind).steps or ())
        for i in range(len(steps)):
            for point in points:
                if point == "compensating" and (
                    _has_pivot(steps[: i + 1], {}) or STEP_WRITES[steps[i]].undo is None
                ):
                    continue
                cases.append(CrashCase(kind, i, point))
    return cases


def _matches(write: Write, steps: list[str], *, undo_of: str | None = None) -> int:
    """How many earlier requests the fault for ``write`` must let pass: the forward writes of
    ``steps`` on the same method and path (each step writes once on a clean run)."""
    n = sum(1 for s in steps if (w := STEP_WRITES[s].execute).method == write.method and w.path == write.path)
    return n


def cli(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sagas.cli", *args],
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


def run_crash_case(
    case: CrashCase, sim: Sim, ledger: Ledger, settings: Settings, env: Mapping[str, str]
) -> CaseResult:
    started = time.monotonic()
    try:
        verdict = _crash_case(case, sim, ledger, settings, env)
    except Exception as exc:  # the harness itself failed for this case: it did not survive
        verdict = Verdict(False, detail=f"harness: {type(exc).__name__}: {exc}")
    finally:
        sim.clear_faults()
    return CaseResult(str(case), verdict, time.monotonic() - started)


def _crash_case(
    case: CrashCase, sim: Sim, ledger: Ledger, settings: Settings, env: Mapping[str, str]
) -> Verdict:
    sim.reset()
    inputs = prepare(case.kind, sim.control, sim.api)
    before = sim.world()
    kind_steps = list(catalog().kind(case.kind).steps or ())
    target = STEP_WRITES[case.step_name]
    if case.point == "compensating":
        steps = [*kind_steps[: case.step + 1], "fail"]
        new = catalog().new_saga("test", inputs, steps=steps)
        expect = SagaStatus.ROLLED_BACK
    else:
        new = catalog().new_saga(case.kind, inputs)
        expect = SagaStatus.COMPLETED
    saga, _ = ledger.create_saga(new)

    baseline = sim.writes()
    hold: Write = target.execute
    if case.point == "before_write":
        after = _matches(hold, kind_steps[: case.step])
        sim.add_faults(
            {
                "kind": "latency",
                "method": hold.method,
                "path": hold.path,
                "after": after,
                "seconds": HOLD_SECONDS,
            }
        )
    elif case.point == "after_write":
        after = _matches(hold, kind_steps[: case.step])
        sim.add_faults(
            {
                "kind": "slow_response",
                "method": hold.method,
                "path": hold.path,
                "after": after,
                "seconds": HOLD_SECONDS,
            }
        )
    elif case.point == "compensating":
        assert target.undo is not None
        hold = target.undo
        after = _matches(hold, kind_steps[: case.step + 1])
        sim.add_faults(
            {
                "kind": "latency",
                "method": hold.method,
                "path": hold.path,
                "after": after,
                "seconds": HOLD_SECONDS,
            }
        )

    def counted() -> int:
        return sum(n for k, n in sim.writes().items() if k.startswith(hold.counter_prefix)) - sum(
            n for k, n in baseline.items() if k.startswith(hold.counter_prefix)
        )

    def reached() -> bool:
        if case.point in ("before_write", "compensating"):
            return sim.fired() >= 1
        if case.point == "after_write":
            return sim.fired() >= 1 and counted() >= 1
        row = steps_of(ledger, saga.id).get(case.step)
        return row is not None and (
            row.status is StepStatus.COMPLETED
            or (target.progress is not None and target.progress in row.output)
        )

    proc = cli(["resume", str(saga.id)], env)
    try:
        deadline = time.monotonic() + 90
        while not reached():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                return Verdict(
                    False, detail=f"runner exited {proc.returncode} before {case.point}: {err[-500:]}"
                )
            if time.monotonic() > deadline:
                return Verdict(False, detail=f"{case.point} never reached")
            time.sleep(0.02)
        if case.point == "before_write" and counted():
            return Verdict(False, detail="harness: the held write was already applied")
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    sim.clear_faults()
    if case.point == "before_write" and counted():
        return Verdict(False, detail="harness: the held write landed after the kill")
    # Recovery with short provider timeouts: a recovery that waits on the wrong thing fails fast.
    quick = settings.model_copy(
        update={"action_timeout_seconds": 5.0, "snapshot_listing_timeout_seconds": 4.0}
    )
    advance_until_terminal(ledger, quick, saga.id)
    return judge(sim, ledger, saga.id, before, inputs, expect)


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


# -- fault storm ------------------------------------------------------------------------------------

DOMAIN = "example.com"
STORM_SHAPES: list[tuple[str, list[str] | None]] = [
    ("snapshot", None),
    ("suspend", None),
    ("update", None),
    ("provision", None),
    ("test", ["create_droplet_snapshot", "fail"]),
    ("test", ["create_droplet", "create_dns_record", "fail"]),
]


def storm_faults(rng: random.Random) -> list[dict[str, Any]]:
    """A seeded mix of every fault the simulator knows, each bounded so sagas can finish."""
    paths = [
        ACTIONS,
        DROPLETS,
        DROPLET,
        RECORDS,
        RECORD,
        SNAPSHOT,
        r"^/v2/actions/\d+$",
        r"/snapshots$",
        ".*",
    ]
    rules: list[dict[str, Any]] = []
    for _ in range(rng.randint(8, 16)):
        kind = rng.choice(["error_500", "error_503_html", "rate_limit_429", "latency", "lose_response"])
        method = rng.choice(["GET", "POST", "DELETE", "*"])
        if kind == "lose_response":
            method = rng.choice(["POST", "DELETE"])
        rule: dict[str, Any] = {
            "kind": kind,
            "method": method,
            "path": rng.choice(paths),
            "after": rng.randint(0, 40),
            "times": rng.randint(1, 3),
        }
        if kind == "latency":
            rule["seconds"] = round(rng.uniform(0.05, 0.6), 2)
        elif kind == "rate_limit_429":
            rule["seconds"] = 1
        rules.append(rule)
    return rules


@dataclass
class StormSaga:
    kind: str
    steps: list[str] | None
    inputs: dict[str, Any]
    droplet: str | None  # the seeded droplet's name, if it acts on one
    saga_id: uuid.UUID | None = None
    error: str | None = None


def fault_storm(sim: Sim, ledger: Ledger, settings: Settings, count: int, seed: int) -> list[CaseResult]:
    """``count`` sagas at once in threads (the core Runner), under a seeded storm of faults.

    Each saga ends terminal, raises nothing unhandled, and the world holds exactly what the
    completed sagas made: nothing leaked, nothing doubled, and no real rate-limit 429.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    sim.reset()
    lag = rng.choice([3.0, 10.0, 25.0])
    sim.control.post(
        "/_sim/config",
        json={"snapshot_listing_lag_seconds": lag, "snapshot_delete_linger_seconds": rng.choice([3.0, 25.0])},
    ).raise_for_status()
    sim.control.post("/_sim/domains", json={"name": DOMAIN}).raise_for_status()
    plans: list[StormSaga] = []
    for i in range(count):
        kind, steps = rng.choice(STORM_SHAPES)
        if kind == "provision" or (steps and steps[0] == "create_droplet"):
            inputs: dict[str, Any] = {
                "name": f"new-{i}",
                "region": "nyc3",
                "size": "s-1vcpu-1gb",
                "image": "ubuntu-24-04-x64",
                "domain": DOMAIN,
                "hostname": f"www-{i}",
            }
            plans.append(StormSaga(kind, steps, inputs, None))
            continue
        name = f"web-{i}"
        droplet_id = int(sim.control.post("/_sim/droplets", json={"name": name}).json()["droplet"]["id"])
        inputs = {"droplet_id": droplet_id}
        if kind == "update":
            inputs["size"] = rng.choice(["s-2vcpu-2gb", "s-2vcpu-4gb"])
        plans.append(StormSaga(kind, steps, inputs, name))
    before = sim.world()
    sim.add_faults(*storm_faults(rng))
    settings = settings.model_copy(update={"do_rate_window_scale": 0.02})

    def one(plan: StormSaga) -> None:
        services = Services(settings)
        try:
            saga, _ = ledger.create_saga(catalog().new_saga(plan.kind, plan.inputs, steps=plan.steps))
            plan.saga_id = saga.id
            Runner(ledger, catalog(), services).advance(saga.id)
        except BaseException as exc:  # an unhandled exception is a finding
            plan.error = f"{type(exc).__name__}: {exc}"
        finally:
            services.close()

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    sim.clear_faults()

    expected = {
        "droplets": dict(before["droplets"]),
        "snapshots": list(before["snapshots"]),
        "records": list(before["records"]),
    }
    results: list[CaseResult] = []
    for i, plan in enumerate(plans):
        problems = []
        if plan.error:
            problems.append(f"raised {plan.error}")
        saga = ledger.get_saga(plan.saga_id) if plan.saga_id else None
        if saga is None:
            problems.append("no saga")
        elif saga.status not in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK):
            problems.append(f"ended {saga.status.value}: {saga.error}")
        elif saga.status is SagaStatus.COMPLETED:
            _apply_storm_saga(expected, plan, saga)
        name = f"storm {i} {plan.kind}{'[' + ','.join(plan.steps) + ']' if plan.steps else ''}"
        results.append(
            CaseResult(name, Verdict(not problems, detail="; ".join(problems)), time.monotonic() - started)
        )
    # The world as a whole: exactly what the completed sagas made.
    deadline = time.monotonic() + 5
    while True:
        extra, missing, notes = _diff(expected, sim.world())
        if not (extra or missing) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    state = sim.state()
    doubled = doubled_creates(state["counters"]["writes"])
    real_429 = int(state["counters"].get("rate_limited_429", 0))
    problems = notes + [f"doubled {d}" for d in doubled]
    if real_429:
        problems.append(f"{real_429} real rate-limit 429s (the shared budget let them through)")
    results.append(
        CaseResult(
            f"storm world (seed {seed})",
            Verdict(not problems, leaked=extra, doubled=len(doubled), detail="; ".join(problems)),
            time.monotonic() - started,
        )
    )
    return results


def _apply_storm_saga(expected: dict[str, Any], plan: StormSaga, saga: SagaRun) -> None:
    droplets = expected["droplets"]
    if "create_droplet_snapshot" in saga.step_names:
        expected["snapshots"].append(f"arcadia-snap-{plan.inputs['droplet_id']}-{saga.id.hex[:8]}")
    if plan.droplet is not None:
        _status, size = droplets[plan.droplet]
        if plan.kind == "suspend":
            droplets[plan.droplet] = ("off", size)
        elif plan.kind == "update":
            droplets[plan.droplet] = ("active", plan.inputs["size"])
    if plan.kind == "provision":
        droplets[plan.inputs["name"]] = ("active", plan.inputs["size"])
        address = saga.context["create_droplet"]["public_ipv4"]
        expected["records"].append((plan.inputs["hostname"], address))
    expected["snapshots"].sort()
    expected["records"].sort()


# -- racing runners -------------------------------------------------------------------------------


def racing_runners(
    sim: Sim,
    ledger: Ledger,
    settings: Settings,
    env: Mapping[str, str],
    count: int,
    *,
    threads_per_saga: int = 3,
    subprocesses: int = 2,
) -> list[CaseResult]:
    """Several runners on each of ``count`` sagas at once (threads, plus ``sagas resume`` processes
    on a few): one runs, the rest are told it is busy, and every provider write happens once."""
    started = time.monotonic()
    sim.reset()
    sim.control.post("/_sim/config", json={"action_seconds": 25}).raise_for_status()  # 0.5 s wall
    sim.control.post("/_sim/domains", json={"name": DOMAIN}).raise_for_status()
    sagas: list[tuple[uuid.UUID, dict[str, Any], str]] = []
    for i in range(count):
        if i % 3 == 2:
            inputs: dict[str, Any] = {
                "name": f"race-{i}",
                "region": "nyc3",
                "size": "s-1vcpu-1gb",
                "image": "debian-12-x64",
                "domain": DOMAIN,
                "hostname": f"race-{i}",
            }
            kind = "provision"
        else:
            droplet = int(
                sim.control.post("/_sim/droplets", json={"name": f"web-{i}"}).json()["droplet"]["id"]
            )
            inputs, kind = {"droplet_id": droplet}, ("suspend" if i % 3 else "snapshot")
        saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs))
        sagas.append((saga.id, inputs, kind))
    settings = settings.model_copy(update={"do_rate_window_scale": 0.02})
    outcomes: dict[uuid.UUID, list[str]] = {saga_id: [] for saga_id, _, _ in sagas}
    lock = threading.Lock()
    gate = threading.Barrier(len(sagas) * threads_per_saga)

    def runner(saga_id: uuid.UUID) -> None:
        services = Services(settings)
        try:
            gate.wait(30)
            Runner(ledger, catalog(), services).advance(saga_id)
            outcome = "ran"
        except SagaBusyError:
            outcome = "busy"
        except BaseException as exc:
            outcome = f"raised {type(exc).__name__}: {exc}"
        finally:
            services.close()
        with lock:
            outcomes[saga_id].append(outcome)

    procs = [cli(["resume", str(saga_id)], env) for saga_id, _, _ in sagas[:subprocesses]]
    threads = [
        threading.Thread(target=runner, args=(saga_id,), daemon=True)
        for saga_id, _, _ in sagas
        for _ in range(threads_per_saga)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        if proc.returncode not in (0, 3):  # 3: busy, wrote nothing
            with lock:
                outcomes[sagas[procs.index(proc)][0]].append(f"cli exited {proc.returncode}: {err[-300:]}")
    results = []
    writes = sim.writes()
    for saga_id, inputs, kind in sagas:
        saga = advance_until_terminal(ledger, settings, saga_id)
        problems = [o for o in outcomes[saga_id] if o not in ("ran", "busy")]
        if saga.status is not SagaStatus.COMPLETED:
            problems.append(f"ended {saga.status.value}: {saga.error}")
        wanted: list[str] = []
        if kind == "provision":
            wanted = [f"droplet:{inputs['name']}", f"dns:A:{inputs['hostname']}.{DOMAIN}"]
        else:
            wanted = [f"snapshot:arcadia-snap-{inputs['droplet_id']}-{saga_id.hex[:8]}"]
            if kind == "suspend":
                wanted.append(f"action:shutdown:{inputs['droplet_id']}")
        writes = sim.writes()
        for key in wanted:
            if writes.get(key, 0) != 1:
                problems.append(f"writes[{key}] = {writes.get(key, 0)}, want exactly 1")
        doubled = sum(1 for key in wanted if writes.get(key, 0) > 1)
        results.append(
            CaseResult(
                f"race {kind} {saga_id}",
                Verdict(not problems, doubled=doubled, detail="; ".join(problems)),
                time.monotonic() - started,
            )
        )
    return results


# -- database faults ----------------------------------------------------------------------------------


def kill_ledger_connections(ledger: Ledger) -> int:
    """Terminate every other connection to the ledger's database, from a connection of our own."""
    import psycopg

    url = ledger._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def database_faults(
    sim: Sim, ledger: Ledger, settings: Settings, count: int, *, kills: int = 3
) -> list[CaseResult]:
    """Postgres connections killed (``kills`` times) while each saga polls a slow snapshot action:
    the saga finishes (after a second advance if the first raised a LedgerError), once."""
    results = []
    for i in range(count):
        started = time.monotonic()
        sim.reset()
        sim.control.post("/_sim/config", json={"action_seconds": 75}).raise_for_status()  # 1.5 s wall
        droplet = seed(sim, f"web-{i}")
        kind, steps = (
            ("test", ["create_droplet_snapshot", "power_off_droplet"]) if i % 2 else ("snapshot", None)
        )
        saga, _ = ledger.create_saga(catalog().new_saga(kind, {"droplet_id": droplet}, steps=steps))
        first: list[str] = []

        def run(saga_id: uuid.UUID = saga.id, first: list[str] = first) -> None:
            services = Services(settings)
            try:
                first.append(Runner(ledger, catalog(), services).advance(saga_id).status.value)
            except SagaError as exc:
                first.append(f"{type(exc).__name__}")
            except BaseException as exc:
                first.append(f"unhandled {type(exc).__name__}: {exc}")
            finally:
                services.close()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        problems = []
        try:
            wait_for(
                lambda saga_id=saga.id: "action_id" in steps_of(ledger, saga_id).get(0, _NO_ROW).output,
                15,
                "the snapshot action to be recorded",
            )
            killed = 0
            for _ in range(kills):
                killed += kill_ledger_connections(ledger)
                time.sleep(0.3)
        except (TimeoutError, LedgerError) as exc:
            problems.append(f"harness: {exc}")
        worker.join(60)
        final = advance_until_terminal(ledger, settings, saga.id)
        if any(f.startswith("unhandled") for f in first):
            problems.append(first[0])
        if final.status is not SagaStatus.COMPLETED:
            problems.append(f"ended {final.status.value}: {final.error}")
        name = f"arcadia-snap-{droplet}-{saga.id.hex[:8]}"
        n = sim.writes().get(f"snapshot:{name}", 0)
        if n != 1:
            problems.append(f"writes[snapshot:{name}] = {n}, want exactly 1")
        live = [s["name"] for s in sim.state()["snapshots"] if not s.get("deleted")]
        if live != [name]:
            problems.append(f"live snapshots {live}, want [{name}]")
        results.append(
            CaseResult(
                f"db faults {kind} #{i} (first advance: {first[0] if first else 'hung'})",
                Verdict(
                    not problems, doubled=int(n > 1), leaked=max(len(live) - 1, 0), detail="; ".join(problems)
                ),
                time.monotonic() - started,
            )
        )
    return results


class _NoRow:
    output: dict[str, Any] = {}


_NO_ROW = _NoRow()


def seed(sim: Sim, name: str) -> int:
    return int(sim.control.post("/_sim/droplets", json={"name": name}).json()["droplet"]["id"])


def summary_line(results: list[CaseResult]) -> str:
    survived = sum(r.verdict.survived for r in results)
    leaked = sum(r.verdict.leaked for r in results)
    doubled = sum(r.verdict.doubled for r in results)
    return f"crash points: {survived}/{len(results)} survived, leaked: {leaked}, doubled: {doubled}"


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


__all__ = [
    "FIXED_KINDS",
    "POINTS",
    "STEP_WRITES",
    "CaseResult",
    "CrashCase",
    "SagaError",
    "Sim",
    "Verdict",
    "advance_until_terminal",
    "crash_cases",
    "judge",
    "run_cases_in_parallel",
    "run_crash_case",
    "simulators",
    "summary_line",
]
