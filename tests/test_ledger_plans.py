"""The runner's fenced statements find their rows by index, whatever the planner knows of the tables.

Each statement of ``sagas.ledger.fenced`` (the ledger's hot path: a few per step of every saga) is
EXPLAINed on a database of its own, young as a new deployment's is (a few rows, never analysed),
with the plans Postgres makes for one execution and the generic plan psycopg's prepared statements
get after five. No plan may read a whole ledger table: once the step row grew a column (migration
0007) the step-completion statement scanned ``saga_step_results`` on every step of a young ledger,
joining its rows to the saga afterwards, and the runner's cost per step grew with the table.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

import sagas.ledger.fenced as fenced
from sagas.ledger.database import dispose_engines, engine_for
from sagas.ledger.store import Ledger
from sagas.settings import load_settings
from tests.conftest import _with_database
from tests.support.recorder import Recorder, make_catalog, make_runner, new_saga

LEDGER_TABLES = {"saga_runs", "saga_step_results", "saga_resource_locks"}

# A value for each parameter the statements name (a statement naming another one fails here: add it).
SAGA_ID = uuid.uuid4()
PARAMS: dict[str, Any] = {
    "saga_id": SAGA_ID,
    "lease_owner": uuid.uuid4(),
    "owner": uuid.uuid4(),
    "lease_epoch": 1,
    "lease_secs": 60.0,
    "secs": 60.0,
    "idx": 1,
    "name": "b",
    "key": "arcadia-b",
    "output": Jsonb({}),
    "patch": Jsonb({}),
    "writing": False,
    "unwriting": False,
    "error": "an error",
    "status": "completed",
    "keep_error": False,
    "running": False,
    "finished": False,
    "release": False,
    "finish": False,
    "finish_unless_cancelled": False,
    "start_next": True,
    "next_idx": 2,
    "next_name": "c",
    "next_key": "arcadia-c",
    "unless_cancelled": False,
    "deadline": 60.0,
}


def statements() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(fenced).items()
        if isinstance(value, str)
        and re.match(r"\s*(WITH|UPDATE|SELECT|INSERT|DELETE)\b", value)
        and "{set}" not in value  # the fence's template; every statement built from it is here
    }


@pytest.fixture(scope="module")
def young_ledger(database_url: str) -> Iterator[str]:
    """A ledger database of its own, on the tests' server, with three sagas of three steps run
    through the runner."""
    name = f"sagas_test_plans_{os.getpid()}"
    server = _with_database(database_url, "postgres")  # a socket URL too (the embedded server)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(database_url, name)
    settings = load_settings(database_url=url)
    try:
        ledger = Ledger(engine_for(settings))
        catalog = make_catalog(Recorder())
        for _ in range(3):
            make_runner(ledger, settings, catalog).advance(new_saga(ledger, catalog))
        yield url
    finally:
        dispose_engines([url])
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def scanned_tables(plan: dict[str, Any]) -> set[str]:
    """The ledger tables a plan reads whole."""
    found = {plan["Relation Name"]} if plan.get("Node Type") == "Seq Scan" else set()
    for child in plan.get("Plans", []):
        found |= scanned_tables(child)
    return found & LEDGER_TABLES


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("name", sorted(statements()))
def test_a_fenced_statement_reads_no_ledger_table_whole(young_ledger: str, name: str, mode: str) -> None:
    statement = statements()[name]
    order: dict[str, int] = {}
    prepared = re.sub(r"%\((\w+)\)s", lambda m: f"${order.setdefault(m[1], len(order) + 1)}", statement)
    missing = order.keys() - PARAMS.keys()
    assert not missing, f"{name} names parameters this test has no value for: {missing}"
    with psycopg.connect(young_ledger, autocommit=True) as conn:
        # Prepared, as psycopg prepares a statement it runs often; then planned for these values
        # (custom) or for any (generic), as Postgres does after five executions.
        conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
        conn.execute(sql.SQL("PREPARE hot AS {}").format(sql.SQL(prepared)))
        values = sql.SQL(", ").join(sql.Literal(PARAMS[p]) for p in order)
        row = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE hot ({})").format(values)).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    assert scanned_tables(plan) == set(), f"{name} reads {scanned_tables(plan)} whole ({mode})"
