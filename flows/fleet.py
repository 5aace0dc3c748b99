"""Nightly fleet snapshots: one snapshot saga per droplet carrying a tag, concurrency-bounded.

Every saga shares the token's DigitalOcean rate budget (250 requests a minute, 5,000 an hour,
per token) with every other process, so a large fleet slows down instead of meeting 429s. Its
requests are scheduled work (``Priority.SCHEDULED``): a rollback or a saga a person started
meanwhile is served first, and the fleet leaves part of each window to them. A droplet held by
another saga (a suspend in progress, say) is skipped and reported, not waited for. Saga ids derive from the
flow run and the droplet, so a retried flow run resumes its sagas instead of doubling them.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, Strict

from app.wiring import App, build_app
from flows.parameters import flat_function
from sagas.digitalocean.ratelimit import Priority, request_priority
from sagas.errors import ResourceBusyError, SagaBusyError, SagaError
from sagas.fields import DropletTag, SnapshotLabel, TriggeredBy
from sagas.runner import Mode
from sagas.settings import TokenPurpose

_FLEET_NAMESPACE = uuid.UUID("5d6c8f7e-3a57-4c4b-9d55-7a1f0e0c2b11")


class FleetParameters(BaseModel):
    """The fleet flow's parameters (flat in its signature, ``flows.parameters``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tag: DropletTag = Field(title="Droplet tag", description="Snapshot every droplet carrying this tag.")
    max_concurrency: Annotated[int, Strict()] = Field(
        default=5,
        ge=1,
        le=50,
        title="Sagas at once",
        description="How many snapshot sagas run at once (1-50).",
    )
    label: SnapshotLabel | None = Field(
        default="nightly", title="Snapshot label", description="Suffix for every snapshot's name."
    )
    triggered_by: TriggeredBy = Field(default="schedule:fleet-snapshot", title="Triggered by")


def _snapshot_one(app: App, params: FleetParameters, droplet_id: int, run_key: str) -> dict[str, Any]:
    saga_id = uuid.uuid5(_FLEET_NAMESPACE, f"{run_key}:{params.tag}:{droplet_id}")
    inputs: dict[str, Any] = {"droplet_id": droplet_id}
    if params.label:
        inputs["label"] = params.label
    try:
        saga = app.provisioning().create_saga(
            "snapshot", inputs, saga_id=saga_id, triggered_by=params.triggered_by
        )
    except ResourceBusyError as exc:
        return {"droplet": droplet_id, "saga": "", "status": "skipped", "detail": str(exc)}
    runner = app.runner()
    try:
        # Set here, in the pool's thread: a context variable does not follow the work into it.
        with request_priority(Priority.SCHEDULED):
            final = runner.advance(saga.id, Mode.FULL)
    except SagaBusyError as exc:
        return {"droplet": droplet_id, "saga": str(saga.id), "status": "busy", "detail": str(exc)}
    except SagaError as exc:
        return {"droplet": droplet_id, "saga": str(saga.id), "status": "error", "detail": str(exc)}
    finally:
        runner.services.close()
    snapshot = final.context.get("create_droplet_snapshot", {}).get("snapshot_name", "")
    return {
        "droplet": droplet_id,
        "saga": str(saga.id),
        "status": final.status.value,
        "detail": final.error or snapshot,
    }


def _artifact_key(prefix: str, tag: str) -> str:
    return f"{prefix}-{tag.lower().replace('_', '-').replace(':', '-')}"


def _tally(counts: dict[str, int], total: int) -> str:
    done = counts.get("completed", 0)
    rolled_back = counts.get("rolled_back", 0)
    other = sum(counts.values()) - done - rolled_back
    return f"{done} done, {rolled_back} rolled back, {other} failed or skipped, of {total} droplets"


def _fleet_snapshot(params: FleetParameters) -> dict[str, Any]:
    """Snapshot every droplet with the tag; a table artifact lists each droplet's outcome."""
    from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

    app = build_app()
    reader = app.runner().services
    try:
        with request_priority(Priority.SCHEDULED):
            droplets = sorted(
                d.id for d in reader.digitalocean(TokenPurpose.READ).list_droplets(tag_name=params.tag)
            )
    finally:
        reader.close()
    run_key = str(flow_run.id or uuid.uuid4())
    progress: Any = create_progress_artifact(  # sync context: the artifact's id
        progress=0.0, key=_artifact_key("fleet-progress", params.tag), description=_tally({}, len(droplets))
    )
    outcomes: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=params.max_concurrency, thread_name_prefix="fleet") as pool:
        futures = [pool.submit(_snapshot_one, app, params, d, run_key) for d in droplets]
        # Progress is reported from the flow's own thread as each saga ends.
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
            update_progress_artifact(
                progress,
                progress=100.0 * len(outcomes) / len(droplets),
                description=_tally(counts, len(droplets)),
            )
    outcomes.sort(key=lambda o: int(o["droplet"]))
    create_table_artifact(
        key=_artifact_key("fleet-snapshot", params.tag),
        table=outcomes,
        description=f"**fleet snapshot of tag {params.tag}**: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())),
    )
    if counts.get("completed", 0) != len(droplets):
        raise SagaError(f"fleet snapshot of {params.tag}: not every droplet completed ({counts})")
    return {"droplets": len(droplets), "outcomes": counts}


fleet_snapshot = flow(name="fleet-snapshot", log_prints=False)(
    flat_function(
        FleetParameters,
        _fleet_snapshot,
        module=__name__,
        name="fleet_snapshot",
        description="Snapshot every droplet with the tag; a table artifact lists each droplet's outcome.",
        last=("triggered_by",),
    )
)
