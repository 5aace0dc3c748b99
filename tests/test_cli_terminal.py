"""What the ``sagas`` command prints, as its users meet it: a failure in one line, ids by their first
digits, a plan that says what a step will not do, and which ledger it read.

Real Postgres, the simulator over loopback, real Prefect (the test harness's server) for the runs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flows.visibility import ledger_rows
from sagas.ledger.store import Ledger
from sagas.models import SagaStatus, StepStatus
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import REPO, advance_saga, live_snapshots, run_cli, seed_droplet


def sagas_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``sagas`` command in its own process, exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
    )


def record(ledger: Ledger, saga_id: str, *, droplet_id: int = 1) -> uuid.UUID:
    """A pending test saga of one no-op step, with this id."""
    new = catalog().new_saga("test", {"droplet_id": droplet_id}, steps=["noop"], saga_id=uuid.UUID(saga_id))
    saga, _ = ledger.create_saga(new)
    return saga.id


# -- a failure reads as an outcome, not a crash ------------------------------------------------------


def test_an_expected_failure_is_one_line_on_stderr_without_traceback_or_runner_warnings(
    prefect_api: str, sim: httpx.Client, ledger: Ledger
) -> None:
    droplet = seed_droplet(sim)
    saga_id = str(uuid.uuid4())
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    inputs = json.dumps({"droplet_id": droplet})
    args = (
        "run",
        "test",
        "--steps",
        "create_droplet_snapshot,fail",
        "--inputs",
        inputs,
        "--saga-id",
        saga_id,
    )

    quiet = sagas_process(*args, env=env)
    assert quiet.returncode == 1, quiet.stderr
    assert live_snapshots(sim) == []
    outcome = (
        f"test saga {str(saga_id)[:8]} rolled back: 1 step undone, nothing left"
        " (step fail failed: the fail step always fails (it exists to test rollback))"
    )
    assert outcome in quiet.stderr.splitlines(), quiet.stderr
    for noise in ("Traceback", "sagas.runner", "Task run", "StepFailedError", "Finished in state"):
        assert noise not in quiet.stderr, quiet.stderr
    assert "rolled_back" in quiet.stdout  # the saga's table, on stdout as before

    # --verbose: the same run (the same id: it is already settled) ...
    settled = sagas_process(*args, "--verbose", env=env)
    assert settled.returncode == 1 and outcome in settled.stderr
    # ... and a new one, which shows the engine: debug records, the runner's warning, the traceback.
    again = sagas_process(*args[:-1], str(uuid.uuid4()), "--verbose", env=env)
    assert again.returncode == 1, again.stderr
    assert "Traceback (most recent call last)" in again.stderr
    assert "WARNING | sagas.runner - step fail of saga" in again.stderr
    assert "| DEBUG   |" in again.stderr


def test_a_run_inside_a_process_where_prefect_already_prints_to_the_console_is_just_as_quiet(
    prefect_api: str, sim: httpx.Client, ledger: Ledger
) -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    # What Prefect's own set-up leaves on the root logger of a process that imported it first.
    console = io.StringIO()
    prefects = PrefectConsoleHandler(stream=console)
    root = logging.getLogger()
    root.addHandler(prefects)
    try:
        result = run_cli(
            "run",
            "test",
            "--steps",
            "create_droplet_snapshot,fail",
            "--inputs",
            json.dumps({"droplet_id": seed_droplet(sim)}),
            "--json",
        )
        assert result.exit_code == 1, result.output
        shown = json.loads(result.stdout)  # --json: stdout is the saga and nothing else
        assert shown["status"] == "rolled_back"
        assert "Traceback" not in result.stderr and "sagas.runner" not in result.stderr, result.stderr
        assert f"test saga {shown['id'][:8]} rolled back: 1 step undone" in result.stderr
        assert console.getvalue() == ""  # muted while the command ran
        # ... and left as it was found: no handler of ours, Prefect's console unfiltered.
        assert not any(type(h).__name__ == "TerminalHandler" for h in root.handlers)
        assert prefects.filters == []
        logging.getLogger("sagas.flows").warning("after the command")
        assert "after the command" in console.getvalue()
    finally:
        root.removeHandler(prefects)


def test_an_expected_failure_is_still_logged_with_its_traceback() -> None:
    """Off the terminal, not out of the logs: the records exist, and verbose output renders them."""
    from app.cli.terminal import TerminalFormatter, shown_in_a_normal_run
    from sagas.errors import StepFailedError

    try:
        raise StepFailedError("fail", "the fail step always fails")
    except StepFailedError:
        record = logging.getLogger("prefect.task_runs").makeRecord(
            "prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed", (), sys.exc_info()
        )
    assert not shown_in_a_normal_run(record)
    assert "Traceback" in TerminalFormatter(tracebacks=True).format(record)
    try:
        raise KeyError("a bug")
    except KeyError:
        bug = logging.getLogger("prefect.task_runs").makeRecord(
            "prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed", (), sys.exc_info()
        )
    assert shown_in_a_normal_run(bug)  # not ours to expect: one line, pointing at --verbose
    line = TerminalFormatter(tracebacks=False).format(bug)
    assert "Traceback" not in line and line.endswith("(KeyError: --verbose shows the traceback)")


# -- a saga by the first digits of its id ------------------------------------------------------------

ONE = "332fa17d-31d3-4e7f-8a10-100000000000"
TWO = "332fa17d-31d3-4e7f-8a10-200000000000"  # the same as ONE up to its 25th character
NEXT = "332fa17e-0000-4000-8000-000000000000"  # just past every id that starts 332fa17d


def test_every_command_taking_an_id_takes_a_unique_start_of_it(ledger: Ledger) -> None:
    one, two, after = (record(ledger, saga_id, droplet_id=n) for n, saga_id in enumerate((ONE, TWO, NEXT), 1))

    for given in (ONE, ONE.upper(), ONE.replace("-", ""), ONE[:25], ONE.replace("-", "")[:21]):
        shown = run_cli("show", given, "--json")
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["id"] == ONE

    ambiguous = run_cli("show", "332fa17d")
    assert ambiguous.exit_code == 2
    assert ONE in ambiguous.stderr and TWO in ambiguous.stderr and "give more of the id" in ambiguous.stderr
    assert NEXT not in ambiguous.stderr
    for longer in ("332fa17d-31d3", "332fa17d31d3", "332fa17d-31d3-4e7f-8a10-"):
        assert run_cli("show", longer).exit_code == 2

    nothing = run_cli("show", "332fa17c")
    assert nothing.exit_code == 4 and "no saga id starts with 332fa17c" in nothing.stderr
    assert run_cli("show", "332fa17").exit_code == 2  # 7 digits: too short to look up
    assert run_cli("show", "332fa-17d").exit_code == 2  # a dash where a UUID has none
    missing = run_cli("show", str(uuid.uuid4()))
    assert missing.exit_code == 4 and "no saga with id" in missing.stderr  # a whole id, as before

    # The same lookup for every command that takes an id.
    resumed = run_cli("resume", TWO[:25], "--json")
    assert resumed.exit_code == 0, resumed.output
    assert ledger.get_saga(two).status is SagaStatus.COMPLETED
    assert run_cli("retry-compensation", TWO[:25]).exit_code == 2  # found, refused: not compensation_failed
    assert run_cli("resolve", NEXT[:8], "--note", "fixed by hand").exit_code == 0
    assert ledger.get_saga(after).status is SagaStatus.RESOLVED
    assert run_cli("cancel", "332fa17d-31d3-4e7f").exit_code == 2  # ambiguous: refused, nothing written
    assert not ledger.get_saga(one).cancel_requested
    cancelled = run_cli("cancel", ONE[:25])
    assert cancelled.exit_code == 0, cancelled.output
    assert ledger.get_saga(one).status is SagaStatus.ROLLED_BACK


def test_a_malformed_id_is_refused_before_the_ledger_is_reached(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGAS_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    for command in (["show"], ["resume"], ["cancel"], ["retry-compensation"], ["resolve", "--note", "x"]):
        for bad in ("not-a-uuid", "332fa17", "332fa-17d"):
            result = run_cli(*command, bad)
            assert result.exit_code == 2, (command, bad, result.output)
    # A well-formed start does reach for the ledger, which is not there: exit 5, not a guess.
    assert run_cli("show", "332fa17d").exit_code == 5


def test_the_prefix_lookup_is_a_range_on_the_primary_key(ledger: Ledger) -> None:
    record(ledger, "00000000-0000-4000-8000-000000000000", droplet_id=1)
    record(ledger, "ffffffff-ffff-4fff-bfff-ffffffffffff", droplet_id=2)
    assert ledger.find_saga_ids_by_prefix("00000000") == [uuid.UUID("00000000-0000-4000-8000-000000000000")]
    assert ledger.find_saga_ids_by_prefix("ffffffff") == [uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")]
    assert ledger.find_saga_ids_by_prefix("7fffffff") == []
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from sagas.ledger.queries import ids_by_prefix_query

    sql = ids_by_prefix_query("332fa17d", 11).compile(
        dialect=postgresql.dialect(),
        compile_kwargs={"literal_binds": True},
    )
    with ledger._engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # a tiny table: make the planner show its hand
        plan = "\n".join(conn.execute(text(f"EXPLAIN {sql}")).scalars())
    assert "Index" in plan and "saga_runs_pkey" in plan, plan


# -- what a step will not do ---------------------------------------------------------------------------


def test_plan_of_an_offboard_without_a_domain_says_an_and_shows_the_dns_step_skipped(ledger: Ledger) -> None:
    result = run_cli("plan", "offboard", "--inputs", '{"droplet_id": 3164444}')
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("plan for an offboard saga (v")
    assert "2  delete_dns_record  skipped\n   why:  no domain and hostname given" in result.stdout
    assert "dns-delete-none" not in result.stdout

    planned = json.loads(run_cli("plan", "offboard", "--inputs", '{"droplet_id": 3164444}', "--json").stdout)
    dns = planned["steps"][2]
    assert (dns["name"], dns["skipped"], dns["idempotency_key"]) == (
        "delete_dns_record",
        "no domain and hostname given",
        None,
    )
    assert [s["skipped"] for s in planned["steps"]] == [None, None, "no domain and hostname given", None]

    with_domain = run_cli(
        "plan",
        "offboard",
        "--inputs",
        '{"droplet_id": 3164444, "domain": "example.com", "hostname": "www"}',
    )
    assert "delete_dns_record  compensatable" in with_domain.stdout
    assert "arcadia-dns-delete-www.example.com-" in with_domain.stdout
    assert run_cli("plan", "snapshot", "--inputs", '{"droplet_id": 1}').stdout.startswith(
        "plan for a snapshot saga"
    )


def test_a_skipped_step_shows_as_skipped_with_why_in_show_and_in_the_artifact(
    ledger: Ledger, sim: httpx.Client, settings: Settings
) -> None:
    new = catalog().new_saga(
        "provision", {"name": "web-9", "region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}
    )
    saga, _ = ledger.create_saga(new)
    done = advance_saga(ledger, settings, saga.id)
    assert done.status is SagaStatus.COMPLETED
    steps = ledger.list_step_results(saga.id)
    assert [(s.step_name, s.status) for s in steps] == [
        ("create_droplet", StepStatus.COMPLETED),
        ("create_dns_record", StepStatus.SKIPPED),
    ]

    shown = run_cli("show", str(saga.id)[:8])
    assert shown.exit_code == 0, shown.output
    assert "create_dns_record" in shown.stdout
    assert "(skipped: no domain and hostname given)" in shown.stdout
    assert "dns-create-none" not in shown.stdout

    row = ledger_rows(steps)[1]
    assert (row["step"], row["status"], row["resources"], row["idempotency key"]) == (
        "create_dns_record",
        "skipped",
        "no domain and hostname given",
        "",
    )


# -- which ledger ---------------------------------------------------------------------------------------


def test_list_and_show_name_no_ledger_when_one_is_configured(ledger: Ledger) -> None:
    saga_id = record(ledger, str(uuid.uuid4()))
    listed = run_cli("list", "--json")
    assert [s["id"] for s in json.loads(listed.stdout)] == [str(saga_id)]
    assert "ledger:" not in listed.stderr
    assert "ledger:" not in run_cli("show", str(saga_id)).stderr


@pytest.fixture
def home_outside_pytest() -> Iterator[Path]:
    """A SAGAS_HOME not under pytest's base temp: as root the embedded server runs as its own user,
    through parents opened to it, and another pytest session starting meanwhile closes pytest's
    base temp again (it keeps it 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="sagas-cli-embedded-"))
    yield folder / "home"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_list_and_show_on_the_embedded_ledger_say_so_on_stderr_and_json_stays_pure(
    home_outside_pytest: Path,
) -> None:
    home = home_outside_pytest
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAS_")}
    env["SAGAS_HOME"] = str(home)
    listed = sagas_process("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    said = f"ledger: the embedded Postgres in {home} (set SAGAS_DATABASE_URL for another)"
    assert said in listed.stderr.splitlines()

    shown = sagas_process("show", str(uuid.uuid4()), "--json", env=env)
    assert shown.returncode == 4 and shown.stdout == ""
    assert said in shown.stderr.splitlines()
