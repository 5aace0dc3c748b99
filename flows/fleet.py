"""Nightly fleet snapshots: one snapshot saga per droplet carrying a tag, run by ``sagas worker``s.

The flow plans, watches and reports; it runs no saga itself. A night's fleet is 40,000 requests
for 10,000 droplets, hours of the account's rate limit: it must not die with one process.

- **Plan**: list the droplets with the tag and record one pending snapshot saga per droplet on a
  queue (``fleet`` by default), with an id derived from this flow run's id and the droplet. A
  droplet held by another saga (a suspend in progress, say) is skipped and reported, not waited
  for. A Prefect Retry of this run (the same flow run id: after its process was killed, say)
  records the same ids again, which the ledger's primary key makes a no-op: no saga is doubled,
  and the run picks up where it was, whatever the workers did meanwhile.
- **Run**: ``sagas worker --queue fleet`` processes, any number on any machines, run the sagas
  (``sagas.worker``), all within the token's one rate budget. The sagas are scheduled work
  (``triggered_by`` ``schedule:...``): a rollback or a saga a person started goes first, and the
  fleet leaves part of each window to them. A worker that dies hands its sagas to the others
  through their leases.
- **Watch**: the ledger is counted every few seconds (one query); the progress artifact says how
  many are done, rolled back, failed, running and waiting, with an ETA from the account's budget
  for scheduled work (per minute and per hour) and the requests a snapshot takes, and from the pace
  so far. When nothing moves for ten minutes, the logs say that no worker seems to run the queue.
- **Report**: a table artifact with each droplet's outcome; the run fails unless every droplet
  completed.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from app.wiring import App, build_app
from flows.parameters import flat_function
from sagas.digitalocean.ratelimit import Priority, ceilings, request_priority
from sagas.errors import ResourceBusyError, SagaError
from sagas.fields import DropletTag, QueueName, SnapshotLabel, TriggeredBy
from sagas.models import SagaRun, SagaStatus
from sagas.settings import Settings, TokenPurpose

_FLEET_NAMESPACE = uuid.UUID("5d6c8f7e-3a57-4c4b-9d55-7a1f0e0c2b11")
# The requests a snapshot saga makes on its common path (README, Benchmarks: the POST, one action
# GET, one listing GET); the ETA's unit of work.
REQUESTS_PER_SNAPSHOT = 3
STALL_SECONDS = 600.0  # nothing moved for this long: say that no worker seems to run the queue
_SETTLED = {
    SagaStatus.COMPLETED,
    SagaStatus.ROLLED_BACK,
    SagaStatus.RESOLVED,
    SagaStatus.FAILED,
    SagaStatus.COMPENSATION_FAILED,
    SagaStatus.AWAITING_APPROVAL,  # a person's turn, not the fleet's
}


class FleetParameters(BaseModel):
    """The fleet flow's parameters (flat in its signature, ``flows.parameters``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tag: DropletTag = Field(title="Droplet tag", description="Snapshot every droplet carrying this tag.")
    queue: QueueName = Field(
        default="fleet",
        title="Queue",
        description="The queue the snapshot sagas go on: `sagas worker --queue <this>` processes run them.",
    )
    label: SnapshotLabel | None = Field(
        default="nightly", title="Snapshot label", description="Suffix for every snapshot's name."
    )
    triggered_by: TriggeredBy = Field(default="schedule:fleet-snapshot", title="Triggered by")


def _artifact_key(prefix: str, tag: str) -> str:
    return f"{prefix}-{tag.lower().replace('_', '-').replace(':', '-')}"


def _plan(app: App, params: FleetParameters, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """Record one queued snapshot saga per droplet with the tag (again: a no-op); returns the
    droplets skipped because another saga holds them."""
    reader = app.runner().services
    try:
        with request_priority(Priority.SCHEDULED):
            droplets = sorted(
                d.id for d in reader.digitalocean(TokenPurpose.READ).list_droplets(tag_name=params.tag)
            )
    finally:
        reader.close()
    provisioning = app.provisioning()
    skipped = []
    for droplet_id in droplets:
        inputs: dict[str, Any] = {"droplet_id": droplet_id}
        if params.label:
            inputs["label"] = params.label
        try:
            provisioning.create_saga(
                "snapshot",
                inputs,
                saga_id=uuid.uuid5(_FLEET_NAMESPACE, f"{run_id}:{params.tag}:{droplet_id}"),
                triggered_by=params.triggered_by,
                queue=params.queue,
                queued_by=run_id,
            )
        except ResourceBusyError as exc:
            skipped.append({"droplet": droplet_id, "saga": "", "status": "skipped", "detail": str(exc)})
    return skipped


@dataclass(frozen=True)
class Budget:
    """What the account's rate budget lets scheduled work send (after the reserves it leaves to
    people and rollbacks), in the budget's own time, which runs ``scale`` times real time."""

    per_minute: int
    per_hour: int
    scale: float

    @classmethod
    def for_scheduled_work(cls, settings: Settings) -> Budget:
        per_minute, per_hour = ceilings(
            settings.do_rate_limit_per_minute, settings.do_rate_limit_per_hour, Priority.SCHEDULED
        )
        return cls(per_minute, per_hour, settings.do_rate_window_scale)

    def seconds_for(self, requests: float, sent_last_hour: float) -> float:
        """Real seconds to send ``requests`` more: at the minute's pace while the hour window has
        room, at the hour's pace after that."""
        room = max(0.0, self.per_hour - sent_last_hour)
        fast = min(requests, room)
        return (fast / self.per_minute * 60 + (requests - fast) / self.per_hour * 3600) * self.scale


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


class Watch:
    """How far the fleet is, and when it will be done: counted from the ledger, with the settled
    count's recent history for the pace."""

    def __init__(self, budget: Budget, total: int, skipped: int) -> None:
        self.budget = budget
        self.total = total  # droplets, skipped ones included
        self.skipped = skipped
        self.history: deque[tuple[float, int]] = deque()  # (monotonic, settled), the last hour

    def note(self, counts: dict[str, int]) -> None:
        now = time.monotonic()
        self.history.append((now, self.settled(counts)))
        horizon = 3600 * self.budget.scale
        while len(self.history) > 2 and self.history[1][0] < now - horizon:
            self.history.popleft()

    @staticmethod
    def settled(counts: dict[str, int]) -> int:
        return sum(n for status, n in counts.items() if SagaStatus(status) in _SETTLED)

    def describe(self, counts: dict[str, int]) -> str:
        done = counts.get("completed", 0)
        rolled_back = counts.get("rolled_back", 0)
        running = counts.get("running", 0) + counts.get("compensating", 0)
        waiting = counts.get("pending", 0)
        failed = self.settled(counts) - done - rolled_back
        line = (
            f"{done} done, {rolled_back} rolled back, {failed} failed, {running} running, {waiting} waiting,"
            f" of {self.total} droplets"
        )
        if self.skipped:
            line += f" ({self.skipped} skipped: held by another saga)"
        remaining = running + waiting
        if remaining:
            line += "; " + self.eta(remaining)
        return line

    def eta(self, remaining: int) -> str:
        b = self.budget
        (first_at, first), (last_at, last) = self.history[0], self.history[-1]
        window = last_at - first_at
        # What this run sent in the hour window (the workers' share of the token; others' unknown).
        sent = (last - first) * REQUESTS_PER_SNAPSHOT if window < 3600 * b.scale else 0.0
        by_budget = b.seconds_for(remaining * REQUESTS_PER_SNAPSHOT, sent)
        line = (
            f"ETA {_duration(by_budget)} at the account's budget for scheduled work ({b.per_minute} requests"
            f" a minute, {b.per_hour:,} an hour; {REQUESTS_PER_SNAPSHOT} requests a snapshot)"
        )
        if window > 0 and last > first:
            pace = (last - first) / window  # sagas settled per real second
            line += f", {_duration(remaining / pace)} at the pace so far ({pace * 60 * b.scale:.1f} a minute)"
        return line


def _watch(
    app: App, params: FleetParameters, run_id: uuid.UUID, skipped: list[dict[str, Any]]
) -> dict[str, int]:
    """Count the run's sagas until every one is settled, updating the progress artifact."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    log = get_run_logger()
    counts = app.ledger.count_queued_by(run_id)
    watch = Watch(Budget.for_scheduled_work(app.settings), sum(counts.values()) + len(skipped), len(skipped))
    watch.note(counts)
    progress: Any = create_progress_artifact(  # sync context: the artifact's id
        progress=_percent(watch, counts),
        key=_artifact_key("fleet-progress", params.tag),
        description=watch.describe(counts),
    )
    poll = min(5.0, max(0.2, 5.0 * watch.budget.scale))
    moved_at, stalled = time.monotonic(), False
    while watch.settled(counts) < sum(counts.values()):
        time.sleep(poll)
        now_counts = app.ledger.count_queued_by(run_id)
        watch.note(now_counts)
        if now_counts != counts:
            counts, moved_at, stalled = now_counts, time.monotonic(), False
            update_progress_artifact(
                progress, progress=_percent(watch, counts), description=watch.describe(counts)
            )
        elif not stalled and time.monotonic() - moved_at > STALL_SECONDS:
            stalled = True
            log.warning(
                f"nothing moved on queue {params.queue} for {STALL_SECONDS / 60:.0f} minutes"
                f" ({watch.describe(counts)}): is a `sagas worker --queue {params.queue}` running against this"
                " ledger?"
            )
    update_progress_artifact(progress, progress=100.0, description=watch.describe(counts))
    return counts


def _percent(watch: Watch, counts: dict[str, int]) -> float:
    return 100.0 * (watch.settled(counts) + watch.skipped) / watch.total if watch.total else 100.0


def _outcome(saga: SagaRun) -> dict[str, Any]:
    snapshot = saga.context.get("create_droplet_snapshot", {}).get("snapshot_name", "")
    return {
        "droplet": saga.inputs.get("droplet_id"),
        "saga": str(saga.id),
        "status": saga.status.value,
        "detail": saga.error or snapshot,
    }


def _fleet_snapshot(params: FleetParameters) -> dict[str, Any]:
    """Snapshot every droplet with the tag through the queue's workers; a table artifact lists each
    droplet's outcome."""
    from prefect.artifacts import create_table_artifact

    log = get_run_logger()
    app = build_app()
    run_id = uuid.UUID(str(flow_run.id)) if flow_run.id else uuid.uuid4()
    if int(flow_run.run_count or 1) > 1:
        log.info(f"run {flow_run.run_count} of this flow run: its sagas are found again, none is doubled")
    skipped = _plan(app, params, run_id)
    counts = app.ledger.count_queued_by(run_id)
    log.info(
        f"{sum(counts.values())} snapshot sagas on queue {params.queue}"
        + (f", {len(skipped)} droplets skipped (held by another saga)" if skipped else "")
        + f"; run them with `sagas worker --queue {params.queue}`"
    )
    _watch(app, params, run_id, skipped)
    outcomes = [_outcome(s) for s in app.ledger.list_queued_by(run_id)] + skipped
    outcomes.sort(key=lambda o: int(o["droplet"]))
    tally: dict[str, int] = {}
    for outcome in outcomes:
        tally[outcome["status"]] = tally.get(outcome["status"], 0) + 1
    create_table_artifact(
        key=_artifact_key("fleet-snapshot", params.tag),
        table=outcomes,
        description=f"**fleet snapshot of tag {params.tag}**: "
        + ", ".join(f"{n} {status}" for status, n in sorted(tally.items())),
    )
    if tally.get("completed", 0) != len(outcomes):
        raise SagaError(f"fleet snapshot of {params.tag}: not every droplet completed ({tally})")
    return {"droplets": len(outcomes), "outcomes": tally}


fleet_snapshot = flow(name="fleet-snapshot", log_prints=False)(
    flat_function(
        FleetParameters,
        _fleet_snapshot,
        module=__name__,
        name="fleet_snapshot",
        description="Snapshot every droplet with the tag through `sagas worker` processes; a table"
        " artifact lists each droplet's outcome.",
        last=("triggered_by",),
    )
)
