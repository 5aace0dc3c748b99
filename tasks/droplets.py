"""Droplet life-cycle steps: create, power off/on, resize, restore, delete.

Each finds its own work at the provider before it acts: a created droplet by its saga tag
(``saga-<saga id>``), a power state by the droplet's status, a resize by its size, an action by
its recorded id (``tasks.actions``). Power and resize undo each other; restore and delete are
pivots, after which the saga only goes forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import (
    Droplet,
    DropletCreateRequest,
    PowerOffActionRequest,
    PowerOnActionRequest,
    ResizeActionRequest,
    RestoreActionRequest,
    ShutdownActionRequest,
)
from sagas.errors import (
    AmbiguousWriteError,
    ProviderActionError,
    ProviderNotFoundError,
    ProviderResponseError,
)
from sagas.fields import (
    COMMON_SIZES,
    DropletId,
    DropletName,
    ImageSlug,
    RegionSlug,
    SizeSlug,
    SnapshotId,
)
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition
from tasks.actions import perform_droplet_action
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


class ResizeInputs(DropletInputs):
    size: SizeSlug = Field(
        description="The new size slug, e.g. s-2vcpu-4gb. Common: " + ", ".join(COMMON_SIZES) + "."
    )
    resize_disk: StrictBool = Field(
        default=False, description="Grow the disk too: permanent, so the resize becomes a pivot."
    )


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


def _droplet_or_none(do: DigitalOceanClient, droplet_id: int) -> Droplet | None:
    try:
        return do.get_droplet(droplet_id)
    except ProviderNotFoundError:
        return None


def _wait_for_status(
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
        lambda: True if _droplet_or_none(do, droplet_id) is None else None,
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
    droplet = _wait_for_status(ctx, do, droplet_id, "active", settings.action_timeout_seconds)
    return {"droplet_id": droplet.id, "name": droplet.name, "public_ipv4": droplet.public_ipv4, "tag": tag}


def _post_droplet(ctx: StepContext, do: DigitalOceanClient, inputs: CreateDropletInputs, tag: str) -> int:
    request = DropletCreateRequest(
        name=inputs.name, region=inputs.region, size=inputs.size, image=inputs.image, tags=[tag]
    )
    for _ in range(3):
        ctx.checkpoint(posting=True)
        try:
            return do.create_droplet(request).id
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


# -- power -------------------------------------------------------------------------------------


def power_off(ctx: StepContext) -> Mapping[str, Any]:
    """Graceful shutdown first, a hard power_off after a timeout; already off counts as done."""
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    settings = ctx.services.settings
    droplet = do.get_droplet(droplet_id)
    if "was_on" not in ctx.recorded:
        ctx.checkpoint(was_on=droplet.status != "off")
    if droplet.status == "off" and not droplet.locked:
        return {"droplet_id": droplet_id, "was_on": ctx.recorded["was_on"]}
    if not ctx.recorded.get("forced"):
        try:
            perform_droplet_action(ctx, do, droplet_id, ShutdownActionRequest(), slot="shutdown")
            _wait_for_status(ctx, do, droplet_id, "off", settings.shutdown_timeout_seconds)
            return {"droplet_id": droplet_id, "was_on": ctx.recorded["was_on"]}
        except ProviderActionError:
            ctx.checkpoint(forced=True)  # the guest did not shut down in time: pull the plug
    perform_droplet_action(ctx, do, droplet_id, PowerOffActionRequest(), slot="power_off")
    _wait_for_status(ctx, do, droplet_id, "off", settings.action_timeout_seconds)
    return {"droplet_id": droplet_id, "was_on": ctx.recorded["was_on"], "forced": True}


def power_on(ctx: StepContext) -> Mapping[str, Any]:
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    droplet = do.get_droplet(droplet_id)
    if "was_off" not in ctx.recorded:
        ctx.checkpoint(was_off=droplet.status != "active")
    if droplet.status != "active":
        perform_droplet_action(ctx, do, droplet_id, PowerOnActionRequest(), slot="power_on")
        _wait_for_status(ctx, do, droplet_id, "active", ctx.services.settings.action_timeout_seconds)
    return {"droplet_id": droplet_id, "was_off": ctx.recorded["was_off"]}


def undo_power_off(ctx: StepContext) -> None:
    """Power the droplet back on, unless it was already off before the saga."""
    if ctx.recorded.get("was_on") is False:
        return
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    droplet = _droplet_or_none(do, droplet_id)
    if droplet is None or droplet.status == "active":
        return
    perform_droplet_action(ctx, do, droplet_id, PowerOnActionRequest(), slot="undo_power_on")
    _wait_for_status(ctx, do, droplet_id, "active", ctx.services.settings.action_timeout_seconds)


def undo_power_on(ctx: StepContext) -> None:
    """Power the droplet back off, unless it was already on before the saga."""
    if ctx.recorded.get("was_off") is False:
        return
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    droplet = _droplet_or_none(do, droplet_id)
    if droplet is None or droplet.status == "off":
        return
    perform_droplet_action(ctx, do, droplet_id, PowerOffActionRequest(), slot="undo_power_off")
    _wait_for_status(ctx, do, droplet_id, "off", ctx.services.settings.action_timeout_seconds)


# -- resize ------------------------------------------------------------------------------------


def resize(ctx: StepContext) -> Mapping[str, Any]:
    inputs = ResizeInputs.model_validate(ctx.inputs)
    do = ctx.services.digitalocean()
    droplet = do.get_droplet(inputs.droplet_id)
    if "original_size" not in ctx.recorded:
        ctx.checkpoint(original_size=droplet.size_slug)  # before acting: the undo needs it
    if droplet.size_slug != inputs.size:
        perform_droplet_action(
            ctx,
            do,
            inputs.droplet_id,
            ResizeActionRequest(size=inputs.size, disk=inputs.resize_disk),
            slot="resize",
        )
        _wait_for_size(ctx, do, inputs.droplet_id, inputs.size)
    return {
        "droplet_id": inputs.droplet_id,
        "original_size": ctx.recorded["original_size"],
        "size": inputs.size,
    }


def undo_resize(ctx: StepContext) -> None:
    """Resize back to the recorded size (CPU/RAM only: a grown disk cannot shrink)."""
    original = ctx.recorded.get("original_size")
    if original is None:
        return  # the size was never read, so nothing was resized
    droplet_id = int(ctx.inputs["droplet_id"])
    do = ctx.services.digitalocean()
    droplet = _droplet_or_none(do, droplet_id)
    if droplet is None or droplet.size_slug == original:
        return
    perform_droplet_action(
        ctx, do, droplet_id, ResizeActionRequest(size=original, disk=False), slot="undo_resize"
    )
    _wait_for_size(ctx, do, droplet_id, original)


def _wait_for_size(ctx: StepContext, do: DigitalOceanClient, droplet_id: int, size: str) -> None:
    wait_until(
        ctx,
        lambda: True if do.get_droplet(droplet_id).size_slug == size else None,
        timeout=ctx.services.settings.action_timeout_seconds,
        what=f"droplet {droplet_id} to be {size}",
    )


def resize_reversibility(inputs: Mapping[str, Any]) -> Reversibility:
    return Reversibility.PIVOT if inputs.get("resize_disk") else Reversibility.COMPENSATABLE


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
    ctx.checkpoint(deleting=True)
    for _ in range(3):
        try:
            do.delete_droplet(droplet_id)  # DELETE is idempotent: repeating it is safe
            break
        except ProviderNotFoundError:
            break  # already gone
        except AmbiguousWriteError:
            if _droplet_or_none(do, droplet_id) is None:
                break
    _wait_until_gone(ctx, do, droplet_id)
    return {"droplet_id": droplet_id, "deleted": True}


def no_undo(ctx: StepContext) -> None:
    """A pivot has no undo: it only runs this when it failed, and then nothing happened."""


def _key(action: str) -> Any:
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
POWER_OFF = StepDefinition(
    name="power_off_droplet",
    execute=power_off,
    compensate=undo_power_off,
    idempotency_key=_key("power-off"),
    summary="shutdown, then power_off after a timeout; wait for status off",
    compensation_summary="power it back on if it was on",
)
POWER_ON = StepDefinition(
    name="power_on_droplet",
    execute=power_on,
    compensate=undo_power_on,
    idempotency_key=_key("power-on"),
    summary="power on; wait for status active",
    compensation_summary="power it back off if it was off",
)
RESIZE = StepDefinition(
    name="resize_droplet",
    execute=resize,
    compensate=undo_resize,
    idempotency_key=_key("resize"),
    reversibility=resize_reversibility,
    inputs_model=ResizeInputs,
    summary="resize to the new size (the droplet must be off)",
    compensation_summary="resize back to the recorded size (a disk resize is a pivot: no undo)",
)
RESTORE = StepDefinition(
    name="restore_droplet",
    execute=restore,
    compensate=no_undo,
    idempotency_key=_key("restore"),
    reversibility=Reversibility.PIVOT,
    inputs_model=RestoreInputs,
    summary="restore the droplet from the snapshot (point of no return)",
    compensation_summary="none: a pivot; the saga goes forward after it",
)
DELETE_DROPLET = StepDefinition(
    name="delete_droplet",
    execute=delete_droplet,
    compensate=no_undo,
    idempotency_key=_key("delete"),
    reversibility=Reversibility.PIVOT,
    inputs_model=DropletInputs,
    summary="delete the droplet and wait until it is gone (point of no return)",
    compensation_summary="none: a pivot",
)
