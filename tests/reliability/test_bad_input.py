"""Bad input, property-based and by reported case: flow parameters, the CLI, the Python API, and
provider responses.

Inputs are refused, never coerced, at every entrance, and nothing is written for a refusal:

- flow parameters: the model a flow validates with either refuses a value or yields a saga whose
  inputs are exactly the values given (same type, same value); the schema a deployment enforces at
  submission (Prefect's own validator, the one the server runs) accepts exactly what the runner
  accepts, but for the two documented run-time-only rules (an integral float for an integer; a
  domain without its hostname);
- ``sagas run`` exits 2 with a message and writes no ledger row, or is valid;
- the Python API (``Provisioning``) raises InputError and writes no ledger row;
- every malformed provider response ends in one of our ProviderError subclasses, never a raw
  KeyError/ValidationError/JSONDecodeError.

``RELIABILITY_EXAMPLES`` raises the example count.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import httpx
import pytest
import typer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import text
from typer.testing import CliRunner

import app.cli.run
from sagas.context import Provisioning
from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient
from sagas.digitalocean.models import DomainRecordCreateRequest, PowerOffActionRequest
from sagas.errors import InputError, ProviderError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun
from tasks.registry import catalog
from tests.conftest import TOKEN

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "50"))
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

INPUT_FIELDS = [
    "droplet_id", "label", "name", "region", "size", "image", "resize_disk", "snapshot_id",
    "domain", "hostname",
]  # fmt: skip
RUN_FIELDS = ["saga_id", "triggered_by", "deployment_id"]
FIELDS = [*INPUT_FIELDS, *RUN_FIELDS, "steps"]
INT_FIELDS = {"droplet_id", "snapshot_id"}
KINDS = ["provision", "suspend", "resume", "update", "rollback", "offboard", "snapshot", "test"]
A_SAGA_ID = "0b9d3c2e-6f4a-4d1b-9a8e-5c7f2e1d0a3b"

# What the reports were about, and their relatives.
numeric_strings = st.sampled_from(
    ["7", " 7 ", "1_000", "-1", "0", "0x10", "1e3", "\uff17", "3164444\n", "+7"]
)
integral_floats = st.integers(min_value=-(2**60), max_value=2**60).map(float)
control_characters = st.characters(categories=["Cc", "Cs", "Zl", "Zp"]) | st.sampled_from(
    ["\u200b", "\u200e", "\u202e", "\u2066", "\u2069", "\ufeff"]
)
with_control = st.builds(
    lambda before, bad, after: before + bad + after,
    st.sampled_from(["", "web-1", "nyc3", "user:42", A_SAGA_ID, "example.com"]),
    control_characters,
    st.sampled_from(["", "x", "-2"]),
)
bad_saga_ids = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\t",
            f" {A_SAGA_ID}",
            f"{A_SAGA_ID} ",
            f"{A_SAGA_ID}\n",
            "{" + A_SAGA_ID + "}",
            f"urn:uuid:{A_SAGA_ID}",
            A_SAGA_ID.replace("-", ""),
            A_SAGA_ID[:-1],
            "not-a-uuid",
        ]
    ),
    with_control,
    st.integers(),
    st.booleans(),
)
bad_droplet_ids = st.one_of(
    st.booleans(),
    numeric_strings,
    integral_floats,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(max_value=0),
    st.integers(min_value=2**53),
    st.none(),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | integral_floats
    | st.text(max_size=30)
    | numeric_strings
    | with_control
    | bad_saga_ids
    | st.sampled_from(
        ["web-1", "nyc3", "s-1vcpu-1gb", "example.com", "www", "@", "create_droplet_snapshot", A_SAGA_ID]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
inputs_dicts = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=6)


def _count_sagas(ledger: Ledger) -> int:
    with ledger._engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM saga_runs")).scalar_one())


# -- flow parameters ------------------------------------------------------------------------------


def _server_schema(kind: str) -> dict[str, Any]:
    """The schema a sealed deployment of the kind enforces (``prefect deploy`` + deployments.seal)."""
    from prefect.utilities.callables import parameter_schema

    from deployments.seal import sealed
    from flows import flow_for

    schema = sealed(parameter_schema(flow_for(kind)).model_dump_for_openapi())
    assert schema is not None
    return schema


def _server_accepts(kind: str, raw: dict[str, Any]) -> bool:
    """What ``POST /deployments/{id}/create_flow_run`` decides, by the validator it calls."""
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    try:
        validate(raw, _server_schema(kind), raise_on_error=True)
    except ValidationError:
        return False
    return True


def _runner_accepts(kind: str, raw: dict[str, Any]) -> bool:
    """What the flow run decides: Prefect's check of the signature, then the body's strict model."""
    from flows import flow_for
    from flows.parameters import parameters_model
    from sagas.fields import validated

    try:
        flow_for(kind).validate_parameters(raw)
        validated(parameters_model(kind), raw, "parameters")
    except Exception:
        return False
    return True


def _refused_only_at_run_time(raw: dict[str, Any]) -> bool:
    """The two rules JSON Schema cannot state as we do (see README, "From the REST API")."""
    integral_float = any(isinstance(raw.get(f), float) and raw[f].is_integer() for f in INT_FIELDS)
    half_a_dns_record = (raw.get("domain") is None) != (raw.get("hostname") is None)
    return integral_float or half_a_dns_record


@BOUNDED
@given(kind=st.sampled_from(KINDS), raw=inputs_dicts)
def test_flow_parameters_refuse_or_make_a_saga_of_exactly_the_values_given(
    kind: str, raw: dict[str, Any]
) -> None:
    from flows.parameters import parameters_model
    from sagas.fields import validated

    try:
        params = validated(parameters_model(kind), raw, f"parameters of the {kind} flow")
    except InputError as exc:
        assert str(exc).startswith(f"bad parameters of the {kind} flow: ")
        return  # the UI form / API refuses it before a run exists
    try:
        new = catalog().new_saga(
            kind,
            params.saga_inputs(),
            steps=getattr(params, "steps", None),
            saga_id=params.saga_id,
            triggered_by=params.triggered_by,
            deployment_id=params.deployment_id,
        )
    except InputError as exc:
        assert kind == "test", exc  # only the test kind's steps check inputs of their own
        return
    defaults = {
        name: field.default
        for name, field in catalog().kind(kind).inputs_model.model_fields.items()
        if not field.is_required() and field.default is not None
    }
    expected = {**defaults, **{k: v for k, v in raw.items() if k in INPUT_FIELDS and v is not None}}
    assert new.inputs == expected
    assert {k: type(v) for k, v in new.inputs.items()} == {k: type(v) for k, v in expected.items()}
    assert new.triggered_by == raw.get("triggered_by", "manual")
    assert new.deployment_id == raw.get("deployment_id")
    if raw.get("saga_id") is not None:
        assert str(new.id) == raw["saga_id"].lower()


@BOUNDED
@given(kind=st.sampled_from(KINDS), raw=inputs_dicts)
def test_the_deployment_schema_accepts_exactly_what_the_flow_run_accepts(
    kind: str, raw: dict[str, Any]
) -> None:
    server, runner = _server_accepts(kind, raw), _runner_accepts(kind, raw)
    if runner:
        assert server, f"refused at submission, valid at run time: {raw!r}"
    if server and not runner:
        assert _refused_only_at_run_time(raw), f"accepted at submission, refused at run time: {raw!r}"


TEXT_FIELDS = [
    "label",
    "name",
    "region",
    "size",
    "image",
    "domain",
    "hostname",
    "triggered_by",
    "deployment_id",
]
A_VALID_CALL = {"droplet_id": 3164444, "snapshot_id": 6372321, "name": "web-1", "region": "nyc3",
                "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64", "steps": ["noop"]}  # fmt: skip


@BOUNDED
@given(
    kind=st.sampled_from(KINDS), field=st.sampled_from([*INT_FIELDS, *TEXT_FIELDS, "saga_id"]), data=st.data()
)
def test_a_bad_value_in_any_field_is_refused_at_submission_and_at_run_time(
    kind: str, field: str, data: st.DataObject
) -> None:
    from flows.parameters import parameters_model

    fields = parameters_model(kind).model_fields
    assume(field in fields)
    if field in INT_FIELDS:
        value = data.draw(st.booleans() | numeric_strings | integral_floats | st.integers(max_value=0))
    elif field == "saga_id":
        value = data.draw(bad_saga_ids)
    else:
        value = data.draw(with_control | st.booleans() | st.integers() | st.just(""))
    raw = {k: v for k, v in A_VALID_CALL.items() if k in fields}
    assert _runner_accepts(kind, raw) and _server_accepts(kind, raw), raw  # the valid call, first
    raw[field] = value
    if not isinstance(value, float):  # 7.0 for an int is refused by the run only (README)
        assert not _server_accepts(kind, raw), raw
    assert not _runner_accepts(kind, raw), raw


# -- the reported cases, one by one ---------------------------------------------------------------

REPORTED_FLOW_PARAMETERS = [
    ("snapshot", {"droplet_id": True}, "droplet_id"),
    ("snapshot", {"droplet_id": "1_000"}, "droplet_id"),
    ("snapshot", {"droplet_id": " 7 "}, "droplet_id"),
    ("snapshot", {"droplet_id": "7"}, "droplet_id"),
    ("snapshot", {"droplet_id": -1}, "droplet_id"),
    ("snapshot", {"droplet_id": 7, "label": "nightly\u0000"}, "label"),
    ("snapshot", {"droplet_id": 7, "triggered_by": "user:42\u0000"}, "triggered_by"),
    ("snapshot", {"droplet_id": 7, "deployment_id": "dep\u202e1"}, "deployment_id"),
    ("snapshot", {"droplet_id": 7, "saga_id": ""}, "saga_id"),
    ("snapshot", {"droplet_id": 7, "saga_id": f" {A_SAGA_ID} "}, "saga_id"),
    ("snapshot", {"droplet_id": 7, "saga_id": "not-a-uuid"}, "saga_id"),
    ("test", {"steps": ["noop"], "name": "web\u0000"}, "name"),
    ("test", {"steps": ["create_droplet_snapshot", "os.system"]}, "steps"),
    ("provision", {"name": "web-1", "region": "NYC3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}, "region"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "raw", "field"), REPORTED_FLOW_PARAMETERS)
def test_reported_flow_parameters_are_refused_at_submission_and_by_the_run_naming_the_field(
    kind: str, raw: dict[str, Any], field: str
) -> None:
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from flows import flow_for
    from flows.parameters import parameters_model
    from sagas.fields import validated

    with pytest.raises(ValidationError, match=f"field '{field}"):
        validate(raw, _server_schema(kind), raise_on_error=True)
    with pytest.raises(ParameterTypeError, match=f" - {field}"):
        flow_for(kind).validate_parameters(raw)
    with pytest.raises(InputError, match=f"{field}"):
        validated(parameters_model(kind), raw, "parameters")


def test_an_unknown_parameter_name_is_refused_at_submission_and_by_the_run() -> None:
    from prefect.exceptions import SignatureMismatchError
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    from flows import flow_for

    misspelt = {"droplet_id": 3164444, "lable": "nightly"}  # the optional label, misspelt
    with pytest.raises(ValidationError, match="'lable' was unexpected"):
        validate(misspelt, _server_schema("snapshot"), raise_on_error=True)
    with pytest.raises(SignatureMismatchError, match="'lable'"):
        flow_for("snapshot").validate_parameters(misspelt)


REPORTED_CLI_CASES = [
    (["run", "snapshot", "--inputs", '{"droplet_id": 1}', "--saga-id", ""], "not a saga id"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 1}', "--saga-id", " "], "not a saga id"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 1}', "--saga-id", f" {A_SAGA_ID} "], "not a saga id"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 1}', "--saga-id", f"{A_SAGA_ID}\n"], "not a saga id"),
    (["run", "snapshot", "--inputs", '{"droplet_id": true}'], "droplet_id: Input should be a valid integer"),
    (["run", "snapshot", "--inputs", '{"droplet_id": "1_000"}'], "droplet_id: Input should be a valid integer"),
    (["run", "snapshot", "--inputs", '{"droplet_id": " 7 "}'], "droplet_id: Input should be a valid integer"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 7.0}'], "droplet_id: Input should be a valid integer"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 7, "droplet_id": 8}'], "more than once"),
    (["run", "snapshot", "--inputs", '{"droplet_id": NaN}'], "not a JSON number"),
    (["run", "test", "--steps", "noop", "--inputs", '{"name": "web\\u0000"}'], "name: must not contain control characters (U+0000"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 7, "label": "a\\u001b[31m"}'], "label: must not contain control characters (U+001B"),
    (["run", "snapshot", "--inputs", '{"droplet_id": 7}', "--triggered-by", "cli\x00"], "triggered_by: must not contain control characters"),
    (["plan", "snapshot", "--inputs", '{"droplet_id": true}'], "droplet_id: Input should be a valid integer"),
    (["list", "--deployment", "dep\x00"], "bad deployment id: must not contain control characters"),
    (["plan", "test", "--steps", "noop", "--inputs", '{"hostname": "www\\u2028"}'], "hostname: must not contain control characters (U+2028"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), REPORTED_CLI_CASES)
def test_reported_cli_inputs_exit_2_naming_the_field_and_write_nothing(
    ledger: Ledger, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app.cli.cli, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert message in result.output, result.output
    assert "could not record" not in result.output
    assert _count_sagas(ledger) == 0


REPORTED_API_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("snapshot", {"droplet_id": True}, {}, "droplet_id"),
    ("snapshot", {"droplet_id": "7"}, {}, "droplet_id"),
    ("snapshot", {"droplet_id": 7.0}, {}, "droplet_id"),
    ("snapshot", {"droplet_id": 7}, {"saga_id": ""}, "saga_id"),
    ("snapshot", {"droplet_id": 7}, {"saga_id": f" {A_SAGA_ID}"}, "saga_id"),
    ("snapshot", {"droplet_id": 7}, {"triggered_by": "a\x00b"}, "triggered_by"),
    ("snapshot", {"droplet_id": 7}, {"deployment_id": ""}, "deployment_id"),
    ("snapshot", {"droplet_id": 7}, {"steps": "create_droplet_snapshot"}, "steps"),
    ("test", {"name": "web\x00"}, {"steps": ["noop"]}, "name"),
    ("test", {}, {"steps": [7]}, "step"),
]


@pytest.mark.parametrize(("kind", "inputs", "options", "field"), REPORTED_API_CASES)
def test_reported_python_api_inputs_raise_input_error_and_write_nothing(
    ledger: Ledger, kind: str, inputs: dict[str, Any], options: dict[str, Any], field: str
) -> None:
    launched: list[SagaRun] = []
    provisioning = Provisioning(ledger, catalog(), launch=launched.append)
    for call in (provisioning.create_saga, provisioning.start_saga):
        with pytest.raises(InputError, match=field):
            call(kind, inputs, **options)
    assert launched == []
    assert _count_sagas(ledger) == 0


def test_snapshot_droplet_refuses_a_numeric_string_and_writes_nothing(ledger: Ledger) -> None:
    launched: list[SagaRun] = []
    provisioning = Provisioning(ledger, catalog(), launch=launched.append)
    with pytest.raises(InputError, match="droplet_id"):
        provisioning.snapshot_droplet("7")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a saga id"):
        provisioning.get_saga(f"{A_SAGA_ID} ")
    assert launched == [] and _count_sagas(ledger) == 0


def test_the_python_api_records_a_saga_under_the_id_it_was_given(ledger: Ledger) -> None:
    """The valid counterpart: a canonical saga id, as text or UUID, is the saga's id."""
    provisioning = Provisioning(ledger, catalog())
    saga = provisioning.create_saga("snapshot", {"droplet_id": 7}, saga_id=A_SAGA_ID)  # type: ignore[arg-type]
    assert saga.id == uuid.UUID(A_SAGA_ID) and saga.inputs == {"droplet_id": 7}
    again = provisioning.create_saga("snapshot", {"droplet_id": 7}, saga_id=uuid.UUID(A_SAGA_ID))
    assert again.id == saga.id and _count_sagas(ledger) == 1


# -- property: the CLI and the Python API ---------------------------------------------------------


class _Accepted(Exception):
    pass


@BOUNDED
@given(
    kind=st.sampled_from([*KINDS, "nope", ""]),
    payload=inputs_dicts.map(json.dumps) | st.text(max_size=40),
    steps=st.none() | st.text(max_size=40) | st.just("create_droplet_snapshot,fail"),
    saga_id=st.none() | bad_saga_ids.filter(lambda v: isinstance(v, str)) | st.just(A_SAGA_ID),
    triggered_by=st.none() | with_control | st.just("cli"),
)
def test_cli_run_refuses_bad_input_with_exit_2_and_writes_nothing(
    kind: str,
    payload: str,
    steps: str | None,
    saga_id: str | None,
    triggered_by: str | None,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []

    def accepted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise typer.Exit(99)  # valid input: stop before Prefect runs

    monkeypatch.setattr(app.cli.run, "run_flow", accepted)
    before = _count_sagas(ledger)
    args = ["run", kind, "--inputs", payload]
    if steps is not None:
        args += ["--steps", steps]
    if saga_id is not None:
        args += ["--saga-id", saga_id]
    if triggered_by is not None:
        args += ["--triggered-by", triggered_by]
    result = CliRunner().invoke(app.cli.cli, args)
    assert result.exit_code in (2, 99), (args, result.exit_code, result.output, result.exception)
    if result.exit_code == 2:
        assert "error" in result.output.lower() or "usage" in result.output.lower(), result.output
        assert not calls
    else:
        assert saga_id in (None, A_SAGA_ID) and triggered_by in (None, "cli"), args
    assert _count_sagas(ledger) == before  # a refusal writes nothing


@BOUNDED
@given(
    droplet_id=bad_droplet_ids | st.just(3164444),
    label=st.none() | with_control | st.just("NIGHTLY"),
    saga_id=st.none() | bad_saga_ids,
    triggered_by=with_control | st.just("") | st.text(min_size=201, max_size=205) | st.just("api"),
    deployment_id=st.none() | with_control | st.just(""),
)
def test_the_python_api_refuses_every_bad_value_and_writes_nothing(
    droplet_id: Any, label: Any, saga_id: Any, triggered_by: Any, deployment_id: Any, ledger: Ledger
) -> None:
    assume(not (droplet_id == 3164444 and type(droplet_id) is int and label is None and saga_id is None
                and triggered_by == "api" and deployment_id is None))  # fmt: skip
    inputs = {"droplet_id": droplet_id} if label is None else {"droplet_id": droplet_id, "label": label}
    before = _count_sagas(ledger)
    with pytest.raises(InputError):
        Provisioning(ledger, catalog()).create_saga(
            "snapshot", inputs, saga_id=saga_id, triggered_by=triggered_by, deployment_id=deployment_id
        )
    assert _count_sagas(ledger) == before


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
