"""A droplet's life and death: create it (undone by deleting it), restore it, delete it, and the
droplet basics every droplet step shares (which droplet, wait for its status, the step keys).

Each finds its own work at the provider before it acts: a created droplet by its saga tag
(``saga-<saga id>``), an action by its recorded id (``tasks.actions``). Restore and delete are
pivots, after which the saga only goes forward. Power and resize, which undo each other, are
``tasks.power``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import (
    Droplet,
    DropletCreateRequest,
    RestoreActionRequest,
)
from sagas.errors import (
    AmbiguousWriteError,
    ProviderActionError,
    ProviderNotFoundError,
    ProviderNotReachedError,
    ProviderResponseError,
    ProviderUnavailableError,
)
from sagas.fields import (
    DropletId,
    DropletName,
    ImageSlug,
    RegionSlug,
    SizeSlug,
    SnapshotId,
)
from sagas.in_doubt import Found, Lookup
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition
from tasks.actions import action_lookup, perform_droplet_action
from tasks.waiting import wait_until


class DropletInputs(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    droplet_id: DropletId


class CreateDropletInputs(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    name: DropletName
    region: RegionSlug
    size: SizeSlug
    image: ImageSlug


class RestoreInputs(DropletInputs):
    snapshot_id: SnapshotId = Field(description="Id of the droplet snapshot to restore.")


def droplet_id_of(ctx: StepContext) -> int:
    """The droplet this saga acts on: an input, or the one an earlier step created."""
    if "droplet_id" in ctx.inputs:
        return int(ctx.inputs["droplet_id"])
    created = ctx.outputs.get("create_droplet", {})
    if "droplet_id" not in created:
        raise ProviderActionError("no droplet to act on: give droplet_id, or run create_droplet first")
    return int(created["droplet_id"])


def droplet_or_none(do: DigitalOceanClient, droplet_id: int) -> Droplet | None:
    try:
        return do.get_droplet(droplet_id)
    except ProviderNotFoundError:
        return None


def wait_for_status(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, status: str, timeout: float
) -> Droplet:
    """An action can report completed before the droplet's status changes: wait for the status."""

    def poll() -> Droplet | None:
        droplet = do.get_droplet(droplet_id)
        return droplet if droplet.status == status and not droplet.locked else None

    return wait_until(ctx, poll, timeout=timeout, what=f"droplet {droplet_id} to be {status}")


def _wait_until_gone(ctx: StepContext, do: DigitalOceanClient, droplet_id: int) -> None:
    wait_until(
        ctx,
        lambda: True if droplet_or_none(do, droplet_id) is None else None,
        timeout=ctx.services.settings.action_timeout_seconds,
        what=f"droplet {droplet_id} to be gone",
    )


# -- create ------------------------------------------------------------------------------------


def saga_tag(scope: KeyScope) -> str:
    return f"saga-{scope.saga_id}"


def create_droplet(ctx: StepContext) -> Mapping[str, Any]:
    inputs = CreateDropletInputs.model_validate(ctx.inputs)
    tag = ctx.idempotency_key
    do = ctx.services.digitalocean()
    droplet_id: int | None = ctx.recorded.get("droplet_id")
    if droplet_id is None:
        tagged = do.list_droplets(tag_name=tag)  # (b) created before a crash? It carries our tag.
        droplet_id = min(d.id for d in tagged) if tagged else _post_droplet(ctx, do, inputs, tag)
        ctx.checkpoint(droplet_id=droplet_id)
    settings = ctx.services.settings
    droplet = wait_for_status(ctx, do, droplet_id, "active", settings.action_timeout_seconds)
    return {"droplet_id": droplet.id, "name": droplet.name, "public_ipv4": droplet.public_ipv4, "tag": tag}


def _post_droplet(ctx: StepContext, do: DigitalOceanClient, inputs: CreateDropletInputs, tag: str) -> int:
    request = DropletCreateRequest(
        name=inputs.name, region=inputs.region, size=inputs.size, image=inputs.image, tags=[tag]
    )
    firsts: list[bool] = []
    for _ in range(3):
        firsts.append(ctx.before_write(posting=True))
        try:
            return do.create_droplet(request).id
        except (ProviderUnavailableError, ProviderNotReachedError):
            # It never reached the provider: nothing was created (and, if nothing before it was
            # sent either, the ledger says so again).
            if len(firsts) == 1:
                ctx.write_not_sent(first=firsts[0], posting=False)
            raise
        except (AmbiguousWriteError, ProviderResponseError):
            # Never post blindly again: a droplet that was created carries our tag.
            found = _find_tagged(ctx, do, tag)
            if found is not None:
                return found
    raise AmbiguousWriteError(f"3 droplet creates for {inputs.name} went unanswered and none carries {tag}")


def _find_tagged(ctx: StepContext, do: DigitalOceanClient, tag: str) -> int | None:
    for _ in range(3):
        tagged = do.list_droplets(tag_name=tag)
        if tagged:
            return min(d.id for d in tagged)
        ctx.sleep(ctx.services.settings.poll_initial_seconds)
    return None


def delete_created_droplet(ctx: StepContext) -> None:
    """Undo: delete every droplet carrying the saga's tag (and the recorded one), and wait."""
    do = ctx.services.digitalocean()
    ids = {d.id for d in do.list_droplets(tag_name=ctx.idempotency_key)}
    if ctx.recorded.get("droplet_id"):
        ids.add(int(ctx.recorded["droplet_id"]))
    for droplet_id in sorted(ids):
        try:
            do.delete_droplet(droplet_id)
        except ProviderNotFoundError:
            pass  # already gone
        _wait_until_gone(ctx, do, droplet_id)


# -- restore and delete: pivots ------------------------------------------------------------------


def restore(ctx: StepContext) -> Mapping[str, Any]:
    inputs = RestoreInputs.model_validate(ctx.inputs)
    do = ctx.services.digitalocean()
    action = perform_droplet_action(
        ctx, do, inputs.droplet_id, RestoreActionRequest(image=inputs.snapshot_id), slot="restore"
    )
    return {"droplet_id": inputs.droplet_id, "restored_from": inputs.snapshot_id, "action_id": action.id}


def delete_droplet(ctx: StepContext) -> Mapping[str, Any]:
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    ctx.before_write(deleting=True)
    for _ in range(3):
        try:
            do.delete_droplet(droplet_id)  # DELETE is idempotent: repeating it is safe
            break
        except ProviderNotFoundError:
            break  # already gone
        except AmbiguousWriteError:
            if droplet_or_none(do, droplet_id) is None:
                break
    _wait_until_gone(ctx, do, droplet_id)
    return {"droplet_id": droplet_id, "deleted": True}


def no_undo(ctx: StepContext) -> None:
    """A pivot has no undo: it only runs this when it failed, and then nothing happened."""


# -- lookups: did a pivot in doubt happen? (facts only; the runner decides, sagas.in_doubt) -----


def restore_lookup(ctx: StepContext) -> Lookup:
    return action_lookup(ctx, RestoreInputs.model_validate(ctx.inputs).droplet_id, "restore", "restore")


def delete_lookup(ctx: StepContext) -> Lookup:
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    if droplet_or_none(do, droplet_id) is None:
        return Lookup(Found.HAPPENED, f"GET /v2/droplets/{droplet_id} is 404: the droplet is gone")
    destroys = [a for a in do.list_droplet_actions(droplet_id, max_pages=1) if a.type == "destroy"]
    if destroys:
        return Lookup(Found.HAPPENED, f"droplet {droplet_id} is being destroyed (action {destroys[0].id})")
    ctx.sleep(ctx.services.settings.poll_max_seconds)  # a late DELETE may still be landing
    if droplet_or_none(do, droplet_id) is None:
        return Lookup(Found.HAPPENED, f"droplet {droplet_id} is gone")
    return Lookup(Found.NOT_HAPPENED, f"droplet {droplet_id} still exists and nothing destroys it")


# -- the steps ---------------------------------------------------------------------------------


def step_key(action: str) -> Any:
    """A droplet step's idempotency key: ``<prefix>-<action>-<droplet id, or new>-<saga id>``."""

    def key(scope: KeyScope) -> str:
        target = scope.inputs.get("droplet_id", "new")
        return f"{scope.prefix}-{action}-{target}-{scope.saga_id.hex}"

    return key


CREATE_DROPLET = StepDefinition(
    name="create_droplet",
    execute=create_droplet,
    compensate=delete_created_droplet,
    idempotency_key=saga_tag,
    inputs_model=CreateDropletInputs,
    summary="create the droplet tagged saga-<saga id>; wait until active and unlocked",
    compensation_summary="delete every droplet carrying that tag and wait until it is gone",
)
RESTORE = StepDefinition(
    name="restore_droplet",
    execute=restore,
    compensate=no_undo,
    idempotency_key=step_key("restore"),
    reversibility=Reversibility.PIVOT,
    inputs_model=RestoreInputs,
    summary="restore the droplet from the snapshot (point of no return)",
    compensation_summary="none: a pivot; the saga goes forward after it",
    lookup=restore_lookup,
)
DELETE_DROPLET = StepDefinition(
    name="delete_droplet",
    execute=delete_droplet,
    compensate=no_undo,
    idempotency_key=step_key("delete"),
    reversibility=Reversibility.PIVOT,
    inputs_model=DropletInputs,
    summary="delete the droplet and wait until it is gone (point of no return)",
    compensation_summary="none: a pivot",
    lookup=delete_lookup,
)
