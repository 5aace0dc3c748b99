"""Droplet snapshots: the ``create_droplet_snapshot`` step, as the seed does it, made crash-safe.

The snapshot's name is its idempotency key: ``<prefix>-snap-<droplet>-<first 8 hex of saga id>``
(plus ``-<label>`` when one is given). Execute looks, in this order, at (a) what the ledger
recorded, (b) the provider, for a snapshot with that name or our action still in flight, and only
then (c) posts the snapshot action, checkpointing ``posting`` before and ``action_id`` right after,
so a runner that dies anywhere in between resumes by polling the same action instead of posting
again (DigitalOcean would accept a second snapshot with the same name once the first finished).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import Action, Snapshot
from sagas.errors import (
    AmbiguousWriteError,
    PendingEventError,
    ProviderActionError,
    ProviderError,
    ProviderNotFoundError,
    ProviderRejectedError,
    ProviderResponseError,
)
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition
from tasks.waiting import Backoff, wait_until

# How far before our step's start a provider action may have started and still be ours:
# clocks of the ledger and of the provider differ a little.
_CLOCK_SKEW = timedelta(seconds=30)


class SnapshotInputs(BaseModel):
    """Inputs of a droplet snapshot, named as DigitalOcean names them."""

    model_config = ConfigDict(extra="ignore")

    droplet_id: int = Field(gt=0, lt=2**53, description="The DigitalOcean droplet id (a number).")
    label: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
        description="Optional suffix for the snapshot name: lowercase letters, digits and dashes.",
    )


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
    found = do.find_droplet_snapshot_by_name(droplet_id, name)  # (b) the provider knows
    if found is not None:
        return _output(droplet_id, found, ctx.recorded.get("action_id"))
    action_id: int | None = ctx.recorded.get("action_id")
    if action_id is None and ctx.recorded.get("posting"):
        # A POST was sent (or about to be) by an earlier attempt whose outcome we never saw.
        action_id = _adopt_action(ctx, do, droplet_id)
    if action_id is None:
        action_id = _post_snapshot(ctx, do, droplet_id, name)  # (c) act
    action = _wait_for_action(ctx, do, action_id)
    if action.status == "errored":
        raise ProviderActionError(f"snapshot action {action_id} on droplet {droplet_id} errored")
    snapshot = _find_snapshot_with_retry(ctx, do, droplet_id, name)
    return _output(droplet_id, snapshot, action_id)


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
    found = do.find_droplet_snapshot_by_name(droplet_id, name)
    if found is not None:
        return found
    action_id: int | None = ctx.recorded.get("action_id")
    if action_id is None and ctx.recorded.get("posting"):
        action_id = _find_our_action(ctx, do, droplet_id)
    if action_id is None:
        return None  # nothing was ever posted, or the POST never reached the provider
    action = _wait_for_action(ctx, do, action_id)
    if action.status != "completed":
        return None
    return _find_snapshot_with_retry(ctx, do, droplet_id, name)


def _post_snapshot(ctx: StepContext, do: DigitalOceanClient, droplet_id: int, name: str) -> int:
    """POST the snapshot action; after any unanswered POST, look for it before posting again."""
    settings = ctx.services.settings
    backoff = Backoff(settings.poll_initial_seconds, settings.poll_max_seconds)
    deadline = ctx.services.monotonic() + settings.action_timeout_seconds
    unanswered = 0
    while True:
        if unanswered:
            # An earlier POST may have been applied late: adopt its action rather than post again.
            adopted = _adopt_action(ctx, do, droplet_id)
            if adopted is not None:
                return adopted
            if unanswered >= 3:
                raise AmbiguousWriteError(
                    f"3 snapshot POSTs for droplet {droplet_id} went unanswered and none shows up;"
                    " the compensation looks again before it would delete anything"
                )
        ctx.checkpoint(posting=True)
        try:
            action = do.create_droplet_snapshot(droplet_id, name)
        except PendingEventError:
            # Another action runs on the droplet (ours, if an earlier POST landed late: the loop's
            # top finds it). Nothing was applied by this one. Wait and try again.
            if ctx.services.monotonic() > deadline:
                _forget_post_unless_unanswered(ctx, unanswered)
                raise
            ctx.sleep(backoff.next())
            continue
        except ProviderResponseError:
            # A 2xx we could not read: the write happened. Adopt it; never post again.
            adopted = _adopt_action(ctx, do, droplet_id)
            if adopted is None:
                raise
            return adopted
        except AmbiguousWriteError:
            unanswered += 1
            ctx.sleep(backoff.next())
            continue
        except ProviderRejectedError:
            _forget_post_unless_unanswered(ctx, unanswered)
            raise
        ctx.checkpoint(action_id=action.id)
        return action.id


def _forget_post_unless_unanswered(ctx: StepContext, unanswered: int) -> None:
    """A definite refusal applied nothing: the undo need not hunt for an action that never was."""
    if not unanswered:
        ctx.checkpoint(posting=False)


def _adopt_action(ctx: StepContext, do: DigitalOceanClient, droplet_id: int) -> int | None:
    action_id = _find_our_action(ctx, do, droplet_id)
    if action_id is not None:
        ctx.checkpoint(action_id=action_id, adopted_action=True)
    return action_id


def _find_our_action(ctx: StepContext, do: DigitalOceanClient, droplet_id: int) -> int | None:
    """The newest snapshot action on the droplet that started after this step did."""
    since: datetime | None = ctx.started_at
    for action in do.list_droplet_actions(droplet_id, max_pages=2):
        if action.type != "snapshot" or action.status == "errored":
            continue
        if since is None or action.started_at >= since - _CLOCK_SKEW:
            return action.id
    return None


def _wait_for_action(ctx: StepContext, do: DigitalOceanClient, action_id: int) -> Action:
    settings = ctx.services.settings

    def poll() -> Action | None:
        action = do.get_action(action_id)
        return action if action.status != "in-progress" else None

    return wait_until(
        ctx,
        poll,
        timeout=settings.action_timeout_seconds,
        what=f"action {action_id} to finish",
    )


def _find_snapshot_with_retry(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, name: str
) -> Snapshot:
    """A finished snapshot shows up in the droplet's listing only seconds later."""
    return wait_until(
        ctx,
        lambda: do.find_droplet_snapshot_by_name(droplet_id, name),
        timeout=ctx.services.settings.snapshot_listing_timeout_seconds,
        what=f"snapshot {name} to appear in droplet {droplet_id}'s listing",
    )


def _output(droplet_id: int, snapshot: Snapshot, action_id: int | None) -> dict[str, Any]:
    return {
        "droplet_id": droplet_id,
        "snapshot_id": snapshot.id,
        "snapshot_name": snapshot.name,
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

__all__ = ["CREATE_DROPLET_SNAPSHOT", "ProviderError", "SnapshotInputs"]
