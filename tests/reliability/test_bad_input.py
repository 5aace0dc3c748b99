"""Bad input, property-based: flow parameters, CLI input and provider responses.

Every flow parameter model either refuses a value (pydantic) or yields inputs the registry accepts
or refuses with an InputError; ``sagas run`` exits 2 with a message (writing no ledger row) or is
valid; every malformed provider response ends in one of our ProviderError subclasses, never a raw
KeyError/ValidationError/JSONDecodeError. ``RELIABILITY_EXAMPLES`` raises the example count.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

import app.cli.run
from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient
from sagas.digitalocean.models import DomainRecordCreateRequest, PowerOffActionRequest
from sagas.errors import InputError, ProviderError
from sagas.ledger.store import Ledger
from tasks.registry import catalog
from tests.conftest import TOKEN

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "50"))
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = [
    "droplet_id", "label", "name", "region", "size", "image", "resize_disk", "snapshot_id",
    "domain", "hostname", "saga_id", "triggered_by", "deployment_id", "steps",
]  # fmt: skip
KINDS = ["provision", "suspend", "resume", "update", "rollback", "offboard", "snapshot", "test"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["web-1", "nyc3", "s-1vcpu-1gb", "example.com", "www", "@", "create_droplet_snapshot"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
inputs_dicts = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6)


def _parameters_model(kind: str) -> type[BaseModel]:
    from flows import flow_for

    return flow_for(kind)[1]  # type: ignore[no-any-return]


@BOUNDED
@given(kind=st.sampled_from(KINDS), raw=inputs_dicts)
def test_flow_parameters_refuse_or_make_a_valid_saga(kind: str, raw: dict[str, Any]) -> None:
    model = _parameters_model(kind)
    try:
        params = model.model_validate(raw)
    except ValidationError:
        return  # the UI form / API refuses it before a run exists
    inputs = params.saga_inputs()  # type: ignore[attr-defined]
    steps = getattr(params, "steps", None)
    try:
        catalog().new_saga(kind, inputs, steps=steps)
    except InputError as exc:
        assert str(exc)  # refused with a message (e.g. an unknown step name), nothing written


def _count_sagas(ledger: Ledger) -> int:
    with ledger._engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM saga_runs")).scalar_one())


class _Accepted(Exception):
    pass


@BOUNDED
@given(
    kind=st.sampled_from([*KINDS, "nope", ""]),
    payload=inputs_dicts.map(json.dumps) | st.text(max_size=40),
    steps=st.none() | st.text(max_size=40) | st.just("create_droplet_snapshot,fail"),
)
def test_cli_run_refuses_bad_input_with_exit_2_and_writes_nothing(
    kind: str, payload: str, steps: str | None, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []

    def accepted(*args: Any) -> Any:
        calls.append(args)
        raise typer.Exit(99)  # valid input: stop before Prefect runs

    monkeypatch.setattr(app.cli.run, "run_flow", accepted)
    before = _count_sagas(ledger)
    args = ["run", kind, "--inputs", payload]
    if steps is not None:
        args += ["--steps", steps]
    result = CliRunner().invoke(app.cli.cli, args)
    assert result.exit_code in (2, 99), (args, result.exit_code, result.output, result.exception)
    if result.exit_code == 2:
        assert "error" in result.output.lower() or "usage" in result.output.lower(), result.output
        assert not calls
    assert _count_sagas(ledger) == before  # a refusal writes nothing


# -- provider responses ---------------------------------------------------------------------------

bodies = st.one_of(
    st.just(b""),
    st.just(b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"),
    st.just(b'{"droplet": {"id": "x"}}'),
    st.just(b'{"action": {"id": 1, "status": 7}}'),
    st.just(b'{"droplets": null, "links": {}, "meta": {"total": "many"}}'),
    st.just(
        b'{"snapshots": [{"id": 1}], "links": {"pages": {"next": "http://evil.example/v2/snapshots?page=2"}}}'
    ),
    st.just(b'{"domain_records": [{"id": true}]}'),
    st.just(b"[1, 2, 3]"),
    st.just(b'{"id": "not_found"'),
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
)
statuses = st.sampled_from([200, 201, 202, 204, 400, 401, 404, 422, 429, 500, 502, 503])
CALLS = [
    lambda do: do.get_droplet(3164444),
    lambda do: do.list_droplets(tag_name="saga-x"),
    lambda do: do.post_droplet_action(3164444, PowerOffActionRequest()),
    lambda do: do.get_action(36804636),
    lambda do: do.list_droplet_snapshots(3164444),
    lambda do: do.find_droplet_snapshot_by_name(3164444, "arcadia-snap-1-abcdef12"),
    lambda do: do.delete_snapshot("67512819"),
    lambda do: do.list_droplet_actions(3164444),
    lambda do: do.list_domain_records("example.com", name="www.example.com", type="A"),
    lambda do: do.create_domain_record(
        "example.com", DomainRecordCreateRequest(type="A", name="www", data="203.0.113.7", ttl=300)
    ),
]


@BOUNDED
@given(
    call=st.sampled_from(range(len(CALLS))),
    status=statuses,
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/html", "text/plain", ""]),
    headers=st.dictionaries(
        st.sampled_from(["retry-after", "ratelimit-reset", "x-request-id", "ratelimit-remaining"]),
        st.text(max_size=12, alphabet=st.characters(codec="ascii", exclude_categories=["Cc"])),
        max_size=3,
    ),
)
def test_malformed_provider_responses_end_in_our_errors(
    call: int, status: int, body: bytes, content_type: str, headers: dict[str, str]
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "api.test"  # the token never leaves for another host
        h = {**headers, **({"content-type": content_type} if content_type else {})}
        return httpx.Response(status, content=body, headers=h)

    http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer))
    retry = DEFAULT_RETRY.replace(attempts=2, base_delay=0, max_delay=0, deadline=1, sleep=lambda s: None)
    with DigitalOceanClient(http, SecretStr(TOKEN), retry=retry, max_rate_limit_wait=2) as do:
        try:
            CALLS[call](do)
        except ProviderError as exc:
            assert TOKEN not in str(exc)
        except InputError:
            pytest.fail("an InputError from a provider response")
    http.close()
