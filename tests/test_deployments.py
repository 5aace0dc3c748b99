"""Prefect as its users use it: a server, `prefect deploy --all` from prefect.yaml, a process worker,
runs triggered through the API. Everything real: the server on Postgres, the ledger, the simulator."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import yaml
from sqlalchemy import text

from sagas.ledger.store import Ledger
from tasks.registry import catalog
from tests.conftest import REPO, live_snapshots, seed_droplet
from tests.prefect_live import LivePrefect, live_pids, prefect_live_fixture  # noqa: F401  (fixture `prefect_live`)
from tests.test_kinds import expected_after, prepare, world

pytestmark = pytest.mark.slow

SAGA_KINDS = ["provision", "suspend", "resume", "update", "rollback", "offboard", "snapshot", "test"]
DECLARED = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def count_rows(ledger: Ledger) -> tuple[int, int]:
    with ledger._engine.connect() as conn:
        sagas = conn.execute(text("SELECT count(*) FROM saga_runs")).scalar_one()
        steps = conn.execute(text("SELECT count(*) FROM saga_step_results")).scalar_one()
    return sagas, steps


def test_prefect_yaml_deploys_every_saga_kind() -> None:
    assert set(SAGA_KINDS) <= set(DECLARED)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_deploy_all_created_each_deployment_of_prefect_yaml(prefect_live: LivePrefect, name: str) -> None:
    with prefect_live.client() as client:
        deployment = client.read_deployment_by_name(f"{name}/{name}")  # each flow is named as its deployment
    declared = DECLARED[name]
    assert deployment.entrypoint == declared["entrypoint"]
    assert deployment.work_pool_name == "sagas"
    assert deployment.work_queue_name == "default"
    assert deployment.enforce_parameter_schema is True
    assert "arcadia-sagas" in deployment.tags
    assert deployment.description == declared["description"]
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
    assert deployment.parameters == declared.get("parameters", {})
    schedules = [s.schedule.model_dump(exclude_none=True, mode="json") for s in deployment.schedules]
    for declared_schedule, schedule in zip(declared.get("schedules", []), schedules, strict=True):
        assert {k: schedule[k] for k in declared_schedule} == declared_schedule
    assert deployment.parameter_openapi_schema["type"] == "object"


BOOKKEEPING = {
    "saga_id": "Saga id (makes a double submission one saga)",
    "triggered_by": "Triggered by",
    "deployment_id": "Customer deployment",
    "require_approval": "Require approval",
}


@pytest.mark.parametrize("kind", SAGA_KINDS)
def test_saga_deployments_take_their_inputs_flat_required_first_bookkeeping_last(
    prefect_live: LivePrefect, kind: str
) -> None:
    from flows.parameters import parameters_model

    with prefect_live.client() as client:
        schema = client.read_deployment_by_name(f"{kind}/{kind}").parameter_openapi_schema
    fields = schema["properties"]
    assert set(fields) == set(parameters_model(kind).model_fields)  # no `params` wrapper
    assert schema["additionalProperties"] is False  # sealed: unknown names are refused
    in_form_order = sorted(fields, key=lambda name: fields[name]["position"])
    required = schema.get("required", [])
    assert in_form_order[: len(required)] == required
    assert in_form_order[-len(BOOKKEEPING) :] == list(BOOKKEEPING)
    assert {name: fields[name]["title"] for name in BOOKKEEPING} == BOOKKEEPING
    undocumented = [name for name, field in fields.items() if not field.get("description")]
    assert undocumented == []
    if kind == "test":
        assert required == ["steps"]
        assert fields["steps"]["items"]["enum"] == catalog().step_names
    elif kind == "provision":
        assert required == ["name", "region", "size", "image"]
        assert "nyc3" in fields["region"]["examples"] and "nyc3" in fields["region"]["description"]
        assert "s-1vcpu-1gb" in fields["size"]["examples"]
        assert "ubuntu-24-04-x64" in fields["image"]["examples"]
    else:
        assert required[0] == "droplet_id"
        assert fields["droplet_id"]["title"] == "Droplet id"
        assert fields["droplet_id"]["type"] == "integer"
        assert fields["droplet_id"]["exclusiveMinimum"] == 0


def test_the_fleet_deployment_takes_flat_parameters_too(prefect_live: LivePrefect) -> None:
    with prefect_live.client() as client:
        deployment = client.read_deployment_by_name("fleet-snapshot/fleet-snapshot")
    fields = deployment.parameter_openapi_schema["properties"]
    assert sorted(fields, key=lambda name: fields[name]["position"]) == [
        "tag",
        "queue",
        "label",
        "triggered_by",
    ]
    assert deployment.parameters == {"tag": "nightly-snapshot", "queue": "fleet"}


def test_the_run_form_flags_a_negative_droplet_id_on_its_field(prefect_live: LivePrefect) -> None:
    """The UI checks a form through /ui/schemas/validate: the error lands on the field, inline."""
    with prefect_live.client() as client:
        schema = client.read_deployment_by_name("snapshot/snapshot").parameter_openapi_schema
    with httpx.Client(base_url=prefect_live.api_url, timeout=10) as http:
        answer = http.post("/ui/schemas/validate", json={"schema": schema, "values": {"droplet_id": -1}})
        valid = http.post("/ui/schemas/validate", json={"schema": schema, "values": {"droplet_id": 7}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["valid"] is False
    [error] = answer.json()["errors"]
    assert error["property"] == "droplet_id" and "minimum of 0" in error["errors"][0]
    assert valid.json() == {"errors": [], "valid": True}


def test_snapshot_deployment_run_through_the_api(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    droplet = seed_droplet(sim)
    started = time.monotonic()
    flow_run = prefect_live.run_deployment("snapshot/snapshot", {"droplet_id": droplet}, timeout=0)
    with prefect_live.client() as client:
        while (run := client.read_flow_run(flow_run.id)).state_type.value in ("SCHEDULED", "PENDING"):
            assert time.monotonic() - started < 90, prefect_live.worker_log()
            time.sleep(0.05)
    prefect_live.timings["triggered run: scheduled -> running"] = time.monotonic() - started
    done = prefect_live.wait_for_flow_run(run.id, timeout=120)
    prefect_live.timings["triggered run: end to end"] = time.monotonic() - started
    assert done.state_type.value == "COMPLETED", (done.state, prefect_live.worker_log())

    sagas = ledger.list_sagas()
    assert len(sagas) == 1
    saga = sagas[0]
    assert saga.kind == "snapshot"
    assert saga.status.value == "completed"
    assert saga.flow_run_id == done.id
    assert saga.inputs == {"droplet_id": droplet}
    assert len(live_snapshots(sim)) == 1


A_VALID_DROPLET = {"name": "web-1", "region": "nyc3", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}
A_SAGA_ID = "0b9d3c2e-6f4a-4d1b-9a8e-5c7f2e1d0a3b"


@pytest.mark.parametrize(
    ("deployment", "parameters", "reason"),
    [
        ("snapshot", {"droplet_id": "abc"}, "'abc' is not of type 'integer'"),
        ("snapshot", {"droplet_id": -1}, "field 'droplet_id'. Failure reason: -1 is less than or equal"),
        (
            "snapshot",
            {"droplet_id": True},
            "field 'droplet_id'. Failure reason: True is not of type 'integer'",
        ),
        ("snapshot", {"droplet_id": "7"}, "field 'droplet_id'. Failure reason: '7' is not of type 'integer'"),
        ("snapshot", {"droplet_id": 2**53}, "field 'droplet_id'"),
        ("snapshot", {"droplet_id": 7, "label": "nightly\u0000"}, "field 'label'"),
        ("snapshot", {"droplet_id": 7, "triggered_by": "user:42\n"}, "field 'triggered_by'"),
        ("snapshot", {"droplet_id": 7, "saga_id": ""}, "field 'saga_id'"),
        ("snapshot", {"droplet_id": 7, "saga_id": f" {A_SAGA_ID} "}, "field 'saga_id'"),
        ("snapshot", {"droplet_id": 7, "surprise": 2}, "'surprise' was unexpected"),
        ("snapshot", {"droplet_id": 7, "lable": "nightly"}, "'lable' was unexpected"),
        ("snapshot", {}, "'droplet_id' is a required property"),
        ("snapshot", {"params": {"droplet_id": 7}}, "'droplet_id' is a required property"),  # the old body
        ("test", {"steps": ["create_droplet_snapshot", "os.system"]}, "'os.system' is not one of"),
        ("test", {"steps": []}, "field 'steps'"),
        ("provision", {**A_VALID_DROPLET, "region": "NYC3"}, "field 'region'"),
        ("fleet-snapshot", {"tag": "nightly", "queue": "Night Queue"}, "field 'queue'"),
    ],
)
def test_invalid_parameters_are_refused_before_any_run_or_saga(
    prefect_live: LivePrefect, ledger: Ledger, deployment: str, parameters: dict[str, object], reason: str
) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    with prefect_live.client() as client:
        before = client.count_flow_runs()
    with pytest.raises(PrefectHTTPStatusError) as refused:
        prefect_live.run_deployment(f"{deployment}/{deployment}", parameters, timeout=0)
    response = refused.value.response
    assert response.status_code == 409, response.text
    assert reason in response.json()["detail"]
    with prefect_live.client() as client:
        assert client.count_flow_runs() == before
    assert count_rows(ledger) == (0, 0)


def test_an_integer_sent_as_a_float_fails_its_run_at_once_naming_the_field_and_writes_nothing(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    """JSON Schema calls 7.0 an integer, so the server takes it (201); the run refuses it."""
    run = prefect_live.run_deployment("snapshot/snapshot", {"droplet_id": float(seed_droplet(sim))})
    assert run.state_type.value == "FAILED", (run.state, prefect_live.worker_log())
    assert "droplet_id" in run.state.message and "valid integer" in run.state.message, run.state.message
    assert count_rows(ledger) == (0, 0)
    assert live_snapshots(sim) == []


def test_an_unsealed_deployment_crashes_a_run_with_an_unknown_name_at_once_and_writes_nothing(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    """Without deployments.seal (a fresh `prefect deploy`) the server takes the name (201); Prefect's
    engine then refuses it before the flow starts: the run crashes, its log names the field."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from deployments.seal import seal

    with prefect_live.client() as client:
        deployment = client.read_deployment_by_name("snapshot/snapshot")
        unsealed = {
            k: v for k, v in deployment.parameter_openapi_schema.items() if k != "additionalProperties"
        }
        client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=unsealed))
    try:
        run = prefect_live.run_deployment(
            "snapshot/snapshot", {"droplet_id": seed_droplet(sim), "lable": "x"}
        )
    finally:
        with prefect_live.client() as client:
            assert seal(client) == ["snapshot"]
    assert run.state_type.value == "CRASHED", (run.state, prefect_live.worker_log())
    with prefect_live.client() as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert any("SignatureMismatchError" in log.message and "'lable'" in log.message for log in logs), [
        log.message for log in logs
    ]
    assert count_rows(ledger) == (0, 0)
    assert live_snapshots(sim) == []


def test_double_submitted_run_with_one_idempotency_key_is_one_run_and_one_saga(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    droplet = seed_droplet(sim)
    saga_id = str(uuid.uuid4())
    key = f"snapshot-{saga_id}"
    params = {"droplet_id": droplet, "saga_id": saga_id}
    first = prefect_live.run_deployment("snapshot/snapshot", params, idempotency_key=key, timeout=0)
    second = prefect_live.run_deployment("snapshot/snapshot", params, idempotency_key=key, timeout=0)
    assert second.id == first.id
    done = prefect_live.wait_for_flow_run(first.id, timeout=120)
    assert done.state_type.value == "COMPLETED", (done.state, prefect_live.worker_log())
    # Submitted again after it finished: still the same run, nothing redone.
    third = prefect_live.run_deployment("snapshot/snapshot", params, idempotency_key=key, timeout=10)
    assert third.id == first.id

    with prefect_live.client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key]))
        )
    assert [r.id for r in runs] == [first.id]
    assert count_rows(ledger) == (1, 1)
    saga = ledger.get_saga(uuid.UUID(saga_id))
    assert saga.status.value == "completed"
    assert saga.flow_run_id == first.id
    assert len(live_snapshots(sim)) == 1


def test_kill_worker_mid_saga_then_the_recovery_deployment_finishes_it(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    """SIGKILL the worker (and its flow run) mid-saga: within the lease and one sweep it is done."""
    sim.post("/_sim/config", json={"action_seconds": 250}).raise_for_status()  # 5 s snapshots
    droplet = seed_droplet(sim)
    slow = prefect_live.run_deployment("snapshot/snapshot", {"droplet_id": droplet}, timeout=0)
    deadline = time.monotonic() + 90
    while not _recorded_action(ledger, slow.id):
        assert time.monotonic() < deadline, prefect_live.worker_log()
        time.sleep(0.1)
    group = prefect_live.worker_processes()  # the worker and the flow run process
    assert prefect_live.kill_worker() == -9
    time.sleep(0.5)
    assert live_pids(group) == [], group
    stranded = ledger.find_saga_by_flow_run(slow.id)
    assert stranded is not None and stranded.status.value == "running"

    prefect_live.start_worker()
    time.sleep(float(prefect_live.env["SAGAS_LEASE_SECONDS"]))  # the dead runner's lease runs out
    sweep = prefect_live.run_deployment("recovery-sweep/recovery-sweep", {})  # what the schedule runs
    assert sweep.state_type.value == "COMPLETED", (sweep.state, prefect_live.worker_log())
    saga = ledger.get_saga(stranded.id)
    assert saga.status.value == "completed", saga.error
    name = f"arcadia-snap-{droplet}-{stranded.id.hex[:8]}"
    assert sim.get("/_sim/state").json()["counters"]["writes"][f"snapshot:{name}"] == 1
    assert [s["name"] for s in live_snapshots(sim)] == [name]


def test_cancel_a_running_saga_through_the_api_rolls_it_back(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    from prefect.states import Cancelling

    sim.post("/_sim/config", json={"action_seconds": 250}).raise_for_status()
    run = prefect_live.run_deployment("snapshot/snapshot", {"droplet_id": seed_droplet(sim)}, timeout=0)
    deadline = time.monotonic() + 90
    while not _recorded_action(ledger, run.id):
        assert time.monotonic() < deadline, prefect_live.worker_log()
        time.sleep(0.1)
    with prefect_live.client() as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    final = prefect_live.wait_for_flow_run(run.id, timeout=120)
    assert final.state_type.value == "CANCELLED", final.state
    saga = ledger.find_saga_by_flow_run(run.id)
    assert saga is not None
    deadline = time.monotonic() + 60
    while ledger.get_saga(saga.id).status.value != "rolled_back":
        assert time.monotonic() < deadline, (ledger.get_saga(saga.id), prefect_live.worker_log())
        time.sleep(0.2)
    assert live_snapshots(sim) == []  # the snapshot in flight was waited for and deleted


def _recorded_action(ledger: Ledger, flow_run_id: uuid.UUID) -> bool:
    saga = ledger.find_saga_by_flow_run(flow_run_id)
    if saga is None:
        return False
    return any("action_id" in s.output for s in ledger.list_step_results(saga.id))


@pytest.mark.parametrize("kind", [k for k in SAGA_KINDS if k not in ("snapshot", "test")])
def test_each_kind_through_the_api(
    kind: str, prefect_live: LivePrefect, sim: httpx.Client, api: httpx.Client, ledger: Ledger
) -> None:
    """Every kind's deployment, triggered as an API caller would, ends completed in ledger and simulator."""
    inputs = prepare(kind, sim, api)
    before = world(sim, api)
    # Straight through: the approval gate of offboard and rollback is tests/test_approval_live.py's.
    run = prefect_live.run_deployment(f"{kind}/{kind}", {**inputs, "require_approval": False})
    assert run.state_type.value == "COMPLETED", (run.state, prefect_live.worker_log())
    saga = ledger.find_saga_by_flow_run(run.id)
    assert saga is not None and saga.status.value == "completed"
    assert world(sim, api) == expected_after(list(saga.step_names), before, saga, inputs)


def test_start_saga_records_then_launches_its_deployment(
    prefect_live: LivePrefect, sim: httpx.Client, ledger: Ledger
) -> None:
    """The seed's start_saga / snapshot_droplet: a row first, then a flow run on the kind's deployment."""
    from app.wiring import build_app

    droplet = seed_droplet(sim)
    with prefect_live.settings():
        provisioning = build_app().provisioning()
        saga = provisioning.snapshot_droplet(droplet, label="adhoc", triggered_by="user:42")
        again = provisioning.start_saga(
            "snapshot", {"droplet_id": droplet, "label": "adhoc"}, saga_id=saga.id, triggered_by="user:42"
        )
    assert again.id == saga.id
    deadline = time.monotonic() + 120
    while ledger.get_saga(saga.id).status.value != "completed":
        assert time.monotonic() < deadline, (ledger.get_saga(saga.id), prefect_live.worker_log())
        time.sleep(0.5)
    done = ledger.get_saga(saga.id)
    assert done.triggered_by == "user:42" and done.flow_run_id is not None
    assert [s["name"] for s in live_snapshots(sim)] == [f"arcadia-snap-{droplet}-{saga.id.hex[:8]}-adhoc"]
    assert count_rows(ledger) == (1, 1)  # launched twice, one saga, one run
