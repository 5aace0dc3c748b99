"""The canary token (tests/conftest.py TOKEN) never shows up: not in logs (DEBUG, every logger),
not in any ledger row, not in the text of any error, across sagas that complete, roll back, fail
their undo, and meet every kind of provider fault."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from sagas.errors import SagaError
from sagas.ledger.store import Ledger
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from tasks.registry import catalog
from tests.conftest import TOKEN, seed_droplet


def _dump_ledger(ledger: Ledger) -> str:
    """Every row of every table in the ledger's schema, as JSON text."""
    out: dict[str, Any] = {}
    with ledger._engine.connect() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ).scalars()
        for table in list(tables):
            rows = conn.execute(text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars()
            out[table] = list(rows)
    return json.dumps(out)


def test_the_token_appears_nowhere(
    sim: httpx.Client, ledger: Ledger, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    droplet = seed_droplet(sim)
    other = seed_droplet(sim, "web-2")
    errors: list[str] = []
    sim.post(
        "/_sim/faults",
        json={
            "rules": [
                {"kind": "error_500", "method": "GET", "times": 2},
                {"kind": "error_503_html", "method": "GET", "after": 3},
                {"kind": "rate_limit_429", "seconds": 1, "after": 5},
                {"kind": "lose_response", "method": "POST", "path": "/actions$"},
                {"kind": "error_500", "method": "DELETE", "path": "^/v2/snapshots/", "times": None},
            ]
        },
    ).raise_for_status()
    runs = [
        ("snapshot", {"droplet_id": droplet}, None),
        ("test", {"droplet_id": other}, ["create_droplet_snapshot", "fail"]),  # undo fails: 500s
        ("snapshot", {"droplet_id": 999999}, None),  # 404 from the provider
    ]
    for kind, inputs, steps in runs:
        saga, _ = ledger.create_saga(catalog().new_saga(kind, inputs, steps=steps))
        services = Services(settings)
        try:
            final = Runner(ledger, catalog(), services).advance(saga.id)
            errors.append(final.error or "")
        except SagaError as exc:
            errors.append(f"{exc!r} {exc}")
        finally:
            services.close()
    for bad in ({"droplet_id": "x"}, {"droplet_id": TOKEN}, {"label": TOKEN}, {"droplet_id": 1, TOKEN: 1}):
        try:
            catalog().new_saga("snapshot", bad, saga_id=uuid.uuid4())
        except SagaError as exc:
            errors.append(str(exc))
    assert any("500" in e for e in errors), errors  # the faults did happen
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert caplog.records
    assert TOKEN not in logged
    assert TOKEN not in _dump_ledger(ledger)
    leaked = [e for e in errors if TOKEN in e]
    # A token *given as input* (a user pasting it in the wrong field) is refused without echoing it.
    assert not leaked, leaked


# Tokens pasted wrong: each reaches the client through a token source (as a Prefect Secret block
# would), past the environment's check, and must be refused without being quoted or sent.
MALFORMED_TOKEN_SHAPES = {
    "curly-quotes": "\u201c{}\u201d",
    "e-acute": "{}\u00e9",
    "crlf": "{}\r\nX-Injected: yes",
    "double-quote": '"{}"',
    "space": "{} x",
    "4kb": "{}" + "a" * 4096,
}


@pytest.mark.parametrize("shape", sorted(MALFORMED_TOKEN_SHAPES))
def test_a_malformed_token_is_refused_and_appears_nowhere(
    sim: httpx.Client, ledger: Ledger, settings: Settings, caplog: pytest.LogCaptureFixture, shape: str
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = MALFORMED_TOKEN_SHAPES[shape].format(TOKEN)
    droplet = seed_droplet(sim)
    saga, _ = ledger.create_saga(catalog().new_saga("snapshot", {"droplet_id": droplet}))
    services = Services(settings, token_source=lambda purpose: SecretStr(bad))
    try:
        final = Runner(ledger, catalog(), services).advance(saga.id)
    finally:
        services.close()

    assert final.status != "completed"
    assert "not a usable DigitalOcean API token" in (final.error or "")
    assert sim.get("/_sim/state").json()["counters"]["requests"] == {}  # nothing was sent
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert TOKEN not in logged
    assert TOKEN not in _dump_ledger(ledger)
    assert TOKEN not in (final.error or "")
