"""Droplet snapshots: the ``create_droplet_snapshot`` step, as the seed does it, made crash-safe.

The snapshot's name is its idempotency key: ``<prefix>-snap-<droplet>-<first 8 hex of saga id>``
(plus ``-<label>`` when one is given). Execute looks, in this order, at (a) what the ledger
recorded, (b) the provider, for a snapshot with that name or our action still in flight, and only
then (c) posts the snapshot action through ``tasks.actions`` (checkpointed before and after, never
re-posted blindly), so a runner that dies anywhere in between resumes by polling the same action
instead of posting again (DigitalOcean would accept a second snapshot with the same name once the
first finished). (b) is skipped only when (a) proves no POST was ever made for this step: the
ledger records ``action_posting`` before any POST, and the name is this saga's alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import Snapshot, SnapshotActionRequest
from sagas.errors import ProviderNotFoundError
from sagas.fields import DropletId, SnapshotLabel
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition
from tasks.actions import find_our_action, perform_droplet_action, wait_for_action
from tasks.waiting import wait_until


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
    # (c) act: post (or adopt the action of an unanswered POST), then wait it out.
    action = perform_droplet_action(ctx, do, droplet_id, SnapshotActionRequest(name=name))
    snapshot = _find_snapshot_with_retry(ctx, do, droplet_id, name, typical="snapshot-listing")
    return _output(droplet_id, snapshot, action.id)


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
    if action_id is None and ctx.recorded.get("action_posting"):
        action_id = find_our_action(ctx, do, droplet_id, "snapshot")
    if action_id is None:
        return None  # nothing was ever posted, or the POST never reached the provider
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
