"""The system in numbers: ``sagas metrics`` against the ledger and the simulator's own counts.

A known set of sagas runs in this process (the simulator's faults and the recording steps arrange
each outcome); its counts are flushed to the ledger as a flow run's would be; ``sagas metrics``
prints the exposition, which ``prometheus_client``'s parser reads back; every number is compared
with what the ledger's rows and the simulator's request journal say. ``sagas metrics serve`` is
checked on the listening socket itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from typer.testing import CliRunner

from app.cli import cli
from sagas.errors import LeaseLostError
from sagas.ledger.metrics import MetricsStore
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus
from sagas.settings import Settings
from sagas.steps import StepContext
from sagas.telemetry import TALLY, Flusher
from sagas.timeline import provider_waits
from tasks.registry import catalog
from tests.conftest import MECHANICS, REPO, advance_saga, seed_droplet
from tests.support.recorder import Recorder, make_catalog, make_runner, new_saga
from tests.test_kinds import prepare

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    """``sagas metrics`` printed once, parsed by prometheus_client: every sample by name and labels."""
    result = CliRunner().invoke(cli, ["metrics"])
    assert result.exit_code == 0, result.output
    samples: Samples = {}
    for family in text_string_to_metric_families(result.output):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` carrying ``labels`` (and any others)."""
    return {
        key: v
        for (n, key), v in samples.items()
        if n == name and all((k, val) in key for k, val in labels.items())
    }


def rows(ledger: Ledger, sql: str, **params: Any) -> list[Any]:
    with ledger._engine.connect() as conn:
        return list(conn.execute(text(sql), params))


@pytest.fixture
def counting(ledger: Ledger) -> Iterator[Flusher]:
    """Counting from nothing: this process's earlier counts dropped, the ledger's totals emptied.
    Yields a flusher to the test's ledger, as ``build_app`` wires one in every process."""
    TALLY.take()
    with ledger._engine.begin() as conn:
        conn.execute(text("TRUNCATE metric_counters"))
    yield Flusher(MetricsStore(ledger._engine).add_counts)
    TALLY.take()


def _start(
    ledger: Ledger, kind: str, inputs: dict[str, Any], steps: list[str] | None = None, **options: Any
) -> uuid.UUID:
    saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, steps=steps, options=options or None))
    return saga.id


def test_after_a_known_set_of_sagas_every_number_is_what_the_ledger_and_the_simulator_say(
    sim: httpx.Client,
    api: httpx.Client,
    ledger: Ledger,
    settings: Settings,
    recorder: Recorder,
    counting: Flusher,
) -> None:
    offboard_inputs = prepare("offboard", sim, api)  # the world an offboard acts on (not counted below)
    droplets = {name: seed_droplet(sim, name) for name in ("snap", "rolled", "stuck", "later")}
    since = sim.get("/_sim/requests", params={"since": 0}).json()["last_seq"]
    before = sim.get("/_sim/state").json()["counters"]

    # Completed, through one 429 the simulator injects.
    sim.post(
        "/_sim/faults", json={"kind": "rate_limit_429", "method": "GET", "seconds": 1}
    ).raise_for_status()
    completed = advance_saga(ledger, settings, _start(ledger, "snapshot", {"droplet_id": droplets["snap"]}))
    assert completed.status is SagaStatus.COMPLETED, completed.error
    # Rolled back: its snapshot is undone after the next step fails.
    failing = ["create_droplet_snapshot", "fail"]
    rolled = advance_saga(
        ledger, settings, _start(ledger, "test", {"droplet_id": droplets["rolled"]}, failing)
    )
    assert rolled.status is SagaStatus.ROLLED_BACK, rolled.error
    # Compensation failed: the snapshot's DELETE keeps failing.
    sim.post("/_sim/faults", json={"kind": "error_500", "method": "DELETE", "times": None}).raise_for_status()
    stuck = advance_saga(ledger, settings, _start(ledger, "test", {"droplet_id": droplets["stuck"]}, failing))
    assert stuck.status is SagaStatus.COMPENSATION_FAILED, stuck.error
    sim.delete("/_sim/faults").raise_for_status()
    # Awaiting a person's approval, after its snapshot.
    waiting = advance_saga(ledger, settings, _start(ledger, "offboard", offboard_inputs))
    assert waiting.status is SagaStatus.AWAITING_APPROVAL, waiting.error
    # Pending: recorded, never run.
    _start(ledger, "snapshot", {"droplet_id": droplets["later"]}, **MECHANICS)
    # Past its pivot, step c fails twice and is retried forward.
    recorder.fail_execute_times["c"] = 2
    mechanics = make_catalog(recorder)
    pivoting, _ = ledger.create_saga(mechanics.new_saga("pivoting", {"x": 2}))
    assert make_runner(ledger, settings, mechanics).advance(pivoting.id).status is SagaStatus.COMPLETED
    # A runner loses its lease inside step b: another runner took the saga over (it stays running).
    lost = new_saga(ledger, mechanics)

    def take_over(ctx: StepContext) -> None:
        with ledger._engine.begin() as conn:
            conn.execute(text("UPDATE saga_runs SET lease_expires_at = now() - interval '1 second'"))
        ledger.claim(lost, 30)

    recorder.during["b"] = take_over
    with pytest.raises(LeaseLostError):
        make_runner(ledger, settings, mechanics).advance(lost)

    assert counting.flush() > 0  # what a flow run's process hands over every few seconds and at exit
    journal = sim.get("/_sim/requests", params={"since": since}).json()["requests"]
    after = sim.get("/_sim/state").json()["counters"]
    samples = scrape()

    # Sagas in each non-terminal status, with the oldest one's age: the ledger's rows.
    open_statuses = [s.value for s in SagaStatus if not s.is_terminal]
    in_ledger = {
        (kind, status): (number, age)
        for kind, status, number, age in rows(
            ledger,
            "SELECT kind, status, count(*), extract(epoch FROM now() - min(created_at)) FROM saga_runs"
            " WHERE status = ANY(:statuses) GROUP BY kind, status",
            statuses=open_statuses,
        )
    }
    assert {k: n for k, (n, _) in in_ledger.items()} == {
        ("snapshot", "pending"): 1,
        ("test", "compensation_failed"): 1,
        ("offboard", "awaiting_approval"): 1,
        ("chain", "running"): 1,
    }
    for kind in catalog().kind_names:  # every kind of the catalog is reported, 0 where none
        for status in open_statuses:
            expected = in_ledger.get((kind, status), (0, None))[0]
            assert value(samples, "sagas_sagas", kind=kind, status=status) == expected, (kind, status)
    assert matching(samples, "sagas_sagas", kind="chain") == {
        frozenset({("kind", "chain"), ("status", "running")}): 1.0
    }
    for (kind, status), (_, age) in in_ledger.items():
        reported = value(samples, "sagas_oldest_saga_age_seconds", kind=kind, status=status)
        assert abs(reported - float(age)) < 5.0, (kind, status, reported, age)
    assert value(samples, "sagas_awaiting_approval", kind="offboard") == 1
    assert value(samples, "sagas_awaiting_approval", kind="snapshot") == 0
    [[deadline_in]] = rows(
        ledger,
        "SELECT extract(epoch FROM approval_deadline_at - now()) FROM saga_runs WHERE id = :id",
        id=waiting.id,
    )
    assert abs(value(samples, "sagas_approval_deadline_seconds", kind="offboard") - float(deadline_in)) < 5.0

    # The undo that gave up, as the ledger holds it, and as it was counted.
    stuck_steps = rows(
        ledger,
        "SELECT r.kind, s.step_name FROM saga_runs r JOIN saga_step_results s ON s.saga_id = r.id"
        " WHERE r.status = 'compensation_failed' AND s.status = 'compensation_failed'",
    )
    assert stuck_steps == [("test", "create_droplet_snapshot")]
    assert matching(samples, "sagas_compensation_failed_steps") == {
        frozenset({("kind", "test"), ("step", "create_droplet_snapshot")}): 1.0
    }
    assert value(samples, "sagas_compensation_failures_total", step="create_droplet_snapshot") == 1
    assert value(samples, "sagas_compensation_failures_total", step="power_off_droplet") == 0

    # Sagas settled, by the status the ledger shows them in now.
    settled = {
        (kind, status): number
        for kind, status, number in rows(
            ledger,
            "SELECT kind, status, count(*) FROM saga_runs WHERE status IN"
            " ('completed', 'rolled_back', 'compensation_failed', 'failed', 'resolved') GROUP BY kind, status",
        )
    }
    assert settled == {
        ("snapshot", "completed"): 1,
        ("test", "rolled_back"): 1,
        ("test", "compensation_failed"): 1,
        ("pivoting", "completed"): 1,
    }
    counted = {
        (dict(key)["kind"], dict(key)["status"]): v
        for key, v in matching(samples, "sagas_settled_total").items()
        if v
    }
    assert counted == settled

    # Retries past the pivot and lease losses, against the ledger's attempts and the runner's stop.
    [[attempts]] = rows(
        ledger,
        "SELECT attempts FROM saga_step_results WHERE saga_id = :id AND step_name = 'c'",
        id=pivoting.id,
    )
    assert value(samples, "sagas_forward_retries_total", step="c") == attempts - 1 == 2
    assert value(samples, "sagas_lease_losses_total", kind="chain") == 1
    assert value(samples, "sagas_lease_losses_total", kind="snapshot") == 0

    # Step durations: one completed try per step the ledger shows completed (skipped ones aside).
    completed_steps = Tally(
        name
        for (name,) in rows(
            ledger,
            "SELECT step_name FROM saga_step_results WHERE completed_at IS NOT NULL AND status <> 'skipped'",
        )
    )
    durations = matching(samples, "sagas_step_duration_seconds_count", outcome="completed")
    assert {dict(k)["step"]: v for k, v in durations.items()} == completed_steps
    failed_tries = {
        dict(k)["step"]: v
        for k, v in matching(samples, "sagas_step_duration_seconds_count", outcome="failed").items()
    }
    # fail: once in each of the two rolled-back sagas; c: twice before its forward retry succeeded.
    assert failed_tries == {"fail": 2, "c": 2}
    for step, number in completed_steps.items():
        top = value(samples, "sagas_step_duration_seconds_bucket", step=step, outcome="completed", le="+Inf")
        assert top == number

    # Provider waits: the provider's own action times the completed steps noted, summed alike.
    waits: dict[str, list[float]] = {}
    for name, output in rows(
        ledger, "SELECT step_name, output FROM saga_step_results WHERE completed_at IS NOT NULL"
    ):
        waits.setdefault(name, []).extend(provider_waits(output))
    waits = {name: seconds for name, seconds in waits.items() if seconds}
    assert set(waits) == {"create_droplet_snapshot"}
    for name, seconds in waits.items():
        assert value(samples, "sagas_provider_wait_seconds_count", step=name) == len(seconds) == 4
        assert value(samples, "sagas_provider_wait_seconds_sum", step=name) == pytest.approx(sum(seconds))

    # Provider requests: what the simulator answered, request by request, by status class.
    answered = Tally(f"{r['status'] // 100}xx" if r["status"] is not None else "none" for r in journal)
    by_class = Tally[str]()
    for key, v in matching(samples, "sagas_provider_requests_total").items():
        by_class[dict(key)["status_class"]] += int(v)
    assert +by_class == +answered
    assert answered["5xx"] > 0 and answered["4xx"] >= 1
    rate_limited = sum(matching(samples, "sagas_provider_rate_limited_total").values())
    assert rate_limited == after["responses_429"] - before["responses_429"] == 1
    assert after["injected_429"] - before["injected_429"] == 1
    # Each request's latency and its wait for the rate budget were measured once.
    assert sum(matching(samples, "sagas_provider_request_duration_seconds_count").values()) == len(journal)
    assert sum(matching(samples, "sagas_rate_budget_wait_seconds_count").values()) == len(journal)


def test_counts_from_many_processes_add_up_and_a_killed_process_keeps_what_it_flushed(
    ledger: Ledger, counting: Flusher, env: dict[str, str]
) -> None:
    """Three processes count at once; two exit (their last counts flushed at exit), one is killed
    with SIGKILL after one flush: the ledger holds the sum of everything that was flushed."""
    script = Path(__file__).parent / "support" / "count_and_flush.py"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), env["SAGAS_DATABASE_URL"], str(n), mode],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n, mode in ((300, "exit"), (500, "exit"), (700, "flush-then-hang"))
    ]
    try:
        hanging = procs[2]
        assert hanging.stdout is not None and hanging.stdout.readline().strip() == "flushed"
        hanging.send_signal(signal.SIGKILL)
        for proc in procs[:2]:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
    samples = scrape()
    # The killed process counted 700 and flushed them, then counted 1 more that it never flushed.
    assert value(samples, "sagas_lease_losses_total", kind="snapshot") == 300 + 500 + 700
    assert value(samples, "sagas_provider_requests_total", method="GET", status_class="2xx") == 3 * 2
    assert value(samples, "sagas_provider_request_duration_seconds_count", method="GET") == 3 * 2
    assert value(samples, "sagas_provider_request_duration_seconds_bucket", method="GET", le="0.05") == 3
    assert value(samples, "sagas_provider_request_duration_seconds_sum", method="GET") == pytest.approx(
        3 * (0.02 + 0.2)
    )


def test_a_count_kept_under_a_bucket_bound_this_code_no_longer_has_lands_in_the_next_bound_up(
    ledger: Ledger, counting: Flusher
) -> None:
    with ledger._engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO metric_counters (name, labels, value) VALUES"
                ' (\'sagas_rate_budget_wait_seconds_bucket\', \'{"priority": "scheduled", "le": "0.3"}\', 4),'
                " ('sagas_rate_budget_wait_seconds_sum', '{\"priority\": \"scheduled\"}', 1.2),"
                ' (\'sagas_rate_budget_wait_seconds_bucket\', \'{"priority": "scheduled", "old": "x"}\', 9)'
            )
        )
    samples = scrape()
    buckets = {
        dict(key)["le"]: v
        for key, v in matching(samples, "sagas_rate_budget_wait_seconds_bucket", priority="scheduled").items()
    }
    assert buckets["0.1"] == 0 and buckets["0.5"] == 4 and buckets["+Inf"] == 4
    assert value(samples, "sagas_rate_budget_wait_seconds_count", priority="scheduled") == 4
    assert value(samples, "sagas_rate_budget_wait_seconds_sum", priority="scheduled") == 1.2


def _listening_address(port: int) -> str:
    """The local address of the socket listening on ``port``, read from the kernel's table."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                if len(address) == 8:
                    return ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                return "::" if set(address) == {"0"} else address
    raise AssertionError(f"nothing listens on port {port}")


def _serve(*options: str) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "metrics", "serve", "--port", "0", *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("serving metrics on http://"), (line, proc.stderr.read() if proc.stderr else "")
    where = line.removeprefix("serving metrics on http://").removesuffix("/metrics")
    host, _, port = where.rpartition(":")
    return proc, host.strip("[]"), int(port)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_metrics_serve_listens_on_loopback_unless_told_otherwise(ledger: Ledger, env: dict[str, str]) -> None:
    proc, host, port = _serve()
    try:
        assert host == "127.0.0.1"
        assert _listening_address(port) == "127.0.0.1"
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {"sagas_sagas", "sagas_provider_requests", "sagas_step_duration_seconds"} <= names
    finally:
        _stop(proc)

    proc, host, port = _serve("--host", "0.0.0.0")
    try:
        assert _listening_address(port) == "0.0.0.0"
    finally:
        _stop(proc)
