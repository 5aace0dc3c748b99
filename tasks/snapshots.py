"""Droplet snapshots: the ``create_droplet_snapshot`` step, as the seed does it, made crash-safe.

The snapshot's name is its idempotency key: ``<prefix>-snap-<droplet>-<first 8 hex of saga id>``
(plus ``-<label>`` when one is given). Execute looks, in this order, at (a) what the ledger
recorded, (b) the provider, for a snapshot with that name or our action still in flight, and only
then (c) posts the snapshot action through ``tasks.actions`` (checkpointed before and after, never
re-posted blindly), so a runner that dies anywhere in between resumes by polling the same action
instead of posting again (DigitalOcean would accept a second snapshot with the same name once the
first finished). (b) is skipped only when (a) proves no POST was ever made for this step: the
ledger records ``action_posting`` before any POST, and the name is this saga's alone.

On the common path a snapshot costs three requests against the account's rate limit: the POST, one
action poll, one listing poll (``tasks.waiting.TypicalWait`` times both). Nothing is read before the
POST: after a POST whose answer never came, the name, the one-action-at-a-time rule and the
timestamps tell our action from a neighbour's (``find_after_unanswered_post``), so only that rare
path pays for lookups.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import Action, Snapshot, SnapshotActionRequest
from sagas.errors import AmbiguousWriteError, ProviderNotFoundError
from sagas.fields import DropletId, SnapshotLabel
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition
from tasks.actions import perform_droplet_action, wait_for_action
from tasks.waiting import Backoff, wait_until

# The provider stamps its Date header at its edge and an action's started_at in its API: allow for
# those clocks differing, and for both being whole seconds, when one is compared with the other.
PROVIDER_CLOCK_MARGIN = timedelta(seconds=5)


class SnapshotInputs(BaseModel):
    """Inputs of a droplet snapshot, named as DigitalOcean names them."""

    model_config = ConfigDict(extra="ignore", strict=True)

    droplet_id: DropletId
    label: SnapshotLabel | None = None


def snapshot_name(scope: KeyScope) -> str:
    inputs = SnapshotInputs.model_validate(scope.inputs)
    name = f"{scope.prefix}-snap-{inputs.droplet_id}-{scope.saga8}"
    return f"{name}-{inputs.label}" if inputs.label else name


def create_droplet_snapshot(ctx: StepContext) -> Mapping[str, Any]:
    droplet_id = SnapshotInputs.model_validate(ctx.inputs).droplet_id
    name = ctx.idempotency_key
    if ctx.recorded.get("snapshot_id"):  # (a) the ledger already knows
        return ctx.recorded
    do = ctx.services.digitalocean()
    if _may_have_posted(ctx):
        found = do.find_droplet_snapshot_by_name(droplet_id, name)  # (b) the provider knows
        if found is not None:
            return _output(droplet_id, found, ctx.recorded.get("action_id"))

    # (c) act: post, then wait it out. After an unanswered POST, look for what our name made
    # first: it ends the step (_Listed), or proves that no POST of ours landed.
    def find_ours() -> int | None:
        landed = find_after_unanswered_post(ctx, do, droplet_id, name)
        if landed is None:
            return None
        raise _Listed(*landed)

    try:
        action = perform_droplet_action(
            ctx, do, droplet_id, SnapshotActionRequest(name=name), find_ours=find_ours
        )
    except _Listed as listed:
        return _adopted_output(droplet_id, listed)
    snapshot = _find_snapshot_with_retry(ctx, do, droplet_id, name, typical="snapshot-listing")
    return _output(droplet_id, snapshot, action.id)


class _Listed(Exception):
    """After an unanswered POST, our snapshot is listed: the step has its result."""

    def __init__(self, snapshot: Snapshot, maker: Action | None) -> None:
        super().__init__(snapshot.name)
        self.snapshot = snapshot
        self.maker = maker


def _adopted_output(droplet_id: int, listed: _Listed) -> dict[str, Any]:
    maker = listed.maker
    if maker is None:
        # The timestamps could not single out the action that made it: record none rather than
        # a neighbour's. The snapshot is ours by its name.
        return {**_output(droplet_id, listed.snapshot, None), "action_adopted": False}
    timeline = {"action_started_at": maker.started_at.isoformat()}
    if maker.completed_at is not None:
        timeline["action_completed_at"] = maker.completed_at.isoformat()
    return {**_output(droplet_id, listed.snapshot, maker.id), "action_adopted": True, **timeline}


def find_after_unanswered_post(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, name: str
) -> tuple[Snapshot, Action | None] | None:
    """After a snapshot POST whose answer never came: our snapshot, with the action that made it
    when the timestamps single it out; None once it is certain that no POST of ours landed. Polls
    (two requests a look) until it can tell.

    One action runs at a time on a droplet (a POST while another runs is a 422 pending event), and
    a snapshot is stamped (``created_at``) while the action that makes it runs: so the snapshot
    action whose run ``[started_at, completed_at]`` alone contains a snapshot's ``created_at`` made
    it. Our snapshot is the one with our name. A snapshot action of the droplet is not ours when it
    started before our first POST could have landed (``action_posted_after``, on the provider's
    clock), when the snapshot it made bears another name, or when it completed longer ago than a
    snapshot takes to be listed (``snapshot_listing_timeout_seconds``) and ours is not listed.
    Any other (still running; finished, its snapshot not listed yet) may be ours: look again later.
    Clocks alone never decide for a candidate: a neighbour's action started just before our POST
    is told apart by the name of what it made.
    """
    settings = ctx.services.settings
    posted_after = _posted_after(ctx)
    listing_lag = timedelta(seconds=settings.snapshot_listing_timeout_seconds)
    backoff = Backoff(settings.poll_initial_seconds, settings.poll_max_seconds)
    give_up = ctx.services.monotonic() + settings.action_timeout_seconds + listing_lag.total_seconds()
    while True:
        snapshots = do.list_droplet_snapshots(droplet_id)
        runs = [
            a
            for a in do.list_droplet_actions(droplet_id, max_pages=1)
            if a.type == "snapshot" and a.status != "errored"
        ]
        ours = min((s for s in snapshots if s.name == name), key=lambda s: s.created_at, default=None)
        if ours is not None:
            maker = _maker(ours, runs)
            if maker is not None and posted_after is not None and maker.started_at < posted_after:
                maker = None  # not an action we could have started: the timestamps are off
            return ours, maker
        made_by_others = {m.id for s in snapshots if s.name != name and (m := _maker(s, runs))}
        now = do.provider_time()
        undecided = [
            a
            for a in runs
            if (posted_after is None or a.started_at >= posted_after)
            and a.id not in made_by_others
            and (a.completed_at is None or now is None or a.completed_at >= now - listing_lag)
        ]
        if not undecided:
            return None
        if ctx.services.monotonic() >= give_up:
            raise AmbiguousWriteError(
                f"cannot tell whether snapshot {name} was posted: snapshot action(s)"
                f" {', '.join(str(a.id) for a in undecided)} on droplet {droplet_id} made nothing"
                " listed under any name in time"
            )
        ctx.sleep(backoff.next())


def _posted_after(ctx: StepContext) -> datetime | None:
    recorded = ctx.recorded.get("action_posted_after")
    if not recorded:
        return None  # posted by a process that had not heard from the provider, or by older code
    return datetime.fromisoformat(str(recorded)) - PROVIDER_CLOCK_MARGIN


def _maker(snapshot: Snapshot, runs: list[Action]) -> Action | None:
    """The finished snapshot action whose run alone contains the snapshot's ``created_at``."""
    during = [
        a
        for a in runs
        if a.completed_at is not None and a.started_at <= snapshot.created_at <= a.completed_at
    ]
    return during[0] if len(during) == 1 else None


def _may_have_posted(ctx: StepContext) -> bool:
    """Whether an earlier attempt of this step may have asked for the snapshot.

    ``tasks.actions`` records ``action_posting`` (durably, fenced) before every POST, and the name
    carries this saga's id, so without that record no snapshot of that name can exist: the
    provider lookup (b) would cost a request against the account's rate limit and find nothing.
    """
    return bool(ctx.recorded.get("action_posting") or ctx.recorded.get("action_id"))


def delete_droplet_snapshot(ctx: StepContext) -> None:
    """Undo: delete our snapshot. Safe when nothing happened; 404 means already gone."""
    droplet_id = SnapshotInputs.model_validate(ctx.inputs).droplet_id
    do = ctx.services.digitalocean()
    snapshot_id = ctx.recorded.get("snapshot_id")
    if not snapshot_id:
        snapshot = _find_in_doubt_snapshot(ctx, do, droplet_id)
        if snapshot is None:
            return
        snapshot_id = snapshot.id
    try:
        do.delete_snapshot(str(snapshot_id))
    except ProviderNotFoundError:
        return  # a deleted snapshot lingers in listings; 404 is the truth: it is gone


def _find_in_doubt_snapshot(ctx: StepContext, do: DigitalOceanClient, droplet_id: int) -> Snapshot | None:
    """The step failed or crashed before recording a snapshot: did one come to exist anyway?"""
    name = ctx.idempotency_key
    try:
        found = do.find_droplet_snapshot_by_name(droplet_id, name)
    except ProviderNotFoundError:
        # The droplet is gone, but snapshots outlive their droplet: look in the whole account.
        return do.find_snapshot_by_name(name)
    if found is not None:
        return found
    action_id: int | None = ctx.recorded.get("action_id")
    if action_id is None:
        if not ctx.recorded.get("action_posting"):
            return None  # nothing was ever posted
        landed = find_after_unanswered_post(ctx, do, droplet_id, name)
        return None if landed is None else landed[0]  # None: the POST never landed
    action = wait_for_action(ctx, do, action_id)
    if action.status != "completed":
        return None
    return _find_snapshot_with_retry(ctx, do, droplet_id, name)


def _find_snapshot_with_retry(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, name: str, *, typical: str | None = None
) -> Snapshot:
    """A finished snapshot shows up in the droplet's listing only seconds later."""
    return wait_until(
        ctx,
        lambda: do.find_droplet_snapshot_by_name(droplet_id, name),
        timeout=ctx.services.settings.snapshot_listing_timeout_seconds,
        what=f"snapshot {name} to appear in droplet {droplet_id}'s listing",
        typical=typical,
    )


def _output(droplet_id: int, snapshot: Snapshot, action_id: int | None) -> dict[str, Any]:
    return {
        "droplet_id": droplet_id,
        "snapshot_id": snapshot.id,
        "snapshot_name": snapshot.name,
        "snapshot_size_gigabytes": snapshot.size_gigabytes,
        "action_id": action_id,
    }


CREATE_DROPLET_SNAPSHOT = StepDefinition(
    name="create_droplet_snapshot",
    execute=create_droplet_snapshot,
    compensate=delete_droplet_snapshot,
    idempotency_key=snapshot_name,
    reversibility=Reversibility.COMPENSATABLE,
    inputs_model=SnapshotInputs,
    summary="snapshot the droplet as <prefix>-snap-<droplet>-<saga8>",
    compensation_summary="delete that snapshot (404 counts as done)",
)
