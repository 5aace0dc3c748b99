"""Droplet life-cycle steps: create, power off/on, resize, restore, delete.

Each finds its own work at the provider before it acts: a created droplet by its saga tag
(``saga-<saga id>``), a power state by the droplet's status, a resize by its size, an action by
its recorded id (``tasks.actions``). Power and resize undo each other; restore and delete are
pivots, after which the saga only goes forward. DigitalOcean refuses (422) a power or resize action
whose end state the droplet already has; a step that meets that refusal has its goal, and says so
in its result instead of failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import (
    Action,
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
    ProviderNotReachedError,
    ProviderRejectedError,
    ProviderResponseError,
    ProviderUnavailableError,
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
from sagas.in_doubt import Found, Lookup
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition
from tasks.actions import find_our_action, perform_droplet_action, wait_for_action
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


# Words of DigitalOcean's 422 for an action whose end state the droplet already has (sources in
# docs/simulator.md). Each means the step's goal was reached another way: a shutdown that took
# effect after our timeout, a guest that powered itself off, a resize made by someone else.
# "already powered on" is not a refusal the simulator makes (the sources disagree), so no test
# meets it; "already off" covers the wording an older SDK lists ("The droplet is already off.").
_ALREADY_THERE: dict[str, tuple[str, ...]] = {
    "power_off": ("already powered off", "already off"),
    "power_on": ("already powered on",),
    "resize": ("already set to this size",),
}


def _act_unless_there(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, request: Any, *, slot: str
) -> bool:
    """Perform the action; False when DigitalOcean refused it because the droplet is already there."""
    try:
        perform_droplet_action(ctx, do, droplet_id, request, slot=slot)
    except ProviderRejectedError as exc:
        # The client puts DigitalOcean's message into the error's text; that is all we have of it.
        words = _ALREADY_THERE.get(request.type, ())
        if exc.status_code != 422 or not any(w in str(exc).lower() for w in words):
            raise
        ctx.note(**{f"{slot}_already_done": True})
        return False
    return True


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
    # The shutdown may still take effect between its timeout and this POST: then it is refused.
    forced = _act_unless_there(ctx, do, droplet_id, PowerOffActionRequest(), slot="power_off")
    _wait_for_status(ctx, do, droplet_id, "off", settings.action_timeout_seconds)
    return {"droplet_id": droplet_id, "was_on": ctx.recorded["was_on"], "forced": forced}


def power_on(ctx: StepContext) -> Mapping[str, Any]:
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    droplet = do.get_droplet(droplet_id)
    if "was_off" not in ctx.recorded:
        ctx.checkpoint(was_off=droplet.status != "active")
    if droplet.status != "active":
        _act_unless_there(ctx, do, droplet_id, PowerOnActionRequest(), slot="power_on")
        _wait_for_status(ctx, do, droplet_id, "active", ctx.services.settings.action_timeout_seconds)
    return {"droplet_id": droplet_id, "was_off": ctx.recorded["was_off"]}


def _let_the_step_finish(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, slots: dict[str, str], then: Any
) -> None:
    """An undo of a step cut off mid-action (a cancel, a timeout, a crash) first lets the step's own
    actions end, and lets the droplet show their effect (``then``, a wait): deciding on the droplet
    as it was a moment before the action landed would undo nothing, and the action would then
    land. ``slots`` maps each action slot the step may have used to its action type."""
    landed = False
    for slot, kind in slots.items():
        action_id: int | None = ctx.recorded.get(f"{slot}_id")
        if action_id is None and ctx.recorded.get(f"{slot}_posting"):
            action_id = find_our_action(ctx, do, droplet_id, kind, slot=slot)
        if action_id is not None and wait_for_action(ctx, do, action_id).status == "completed":
            landed = True
    if landed:
        then()


def undo_power_off(ctx: StepContext) -> None:
    """Power the droplet back on, unless it was already off before the saga."""
    if ctx.recorded.get("was_on") is False:
        return
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    timeout = ctx.services.settings.action_timeout_seconds
    _let_the_step_finish(
        ctx,
        do,
        droplet_id,
        {"shutdown": "shutdown", "power_off": "power_off"},
        lambda: _wait_for_status(ctx, do, droplet_id, "off", timeout),
    )
    droplet = _droplet_or_none(do, droplet_id)
    if droplet is None or droplet.status == "active":
        return
    _act_unless_there(ctx, do, droplet_id, PowerOnActionRequest(), slot="undo_power_on")
    _wait_for_status(ctx, do, droplet_id, "active", ctx.services.settings.action_timeout_seconds)


def undo_power_on(ctx: StepContext) -> None:
    """Power the droplet back off, unless it was already on before the saga."""
    if ctx.recorded.get("was_off") is False:
        return
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    timeout = ctx.services.settings.action_timeout_seconds
    _let_the_step_finish(
        ctx,
        do,
        droplet_id,
        {"power_on": "power_on"},
        lambda: _wait_for_status(ctx, do, droplet_id, "active", timeout),
    )
    droplet = _droplet_or_none(do, droplet_id)
    if droplet is None or droplet.status == "off":
        return
    _act_unless_there(ctx, do, droplet_id, PowerOffActionRequest(), slot="undo_power_off")
    _wait_for_status(ctx, do, droplet_id, "off", ctx.services.settings.action_timeout_seconds)


# -- resize ------------------------------------------------------------------------------------


def resize(ctx: StepContext) -> Mapping[str, Any]:
    inputs = ResizeInputs.model_validate(ctx.inputs)
    do = ctx.services.digitalocean()
    droplet = do.get_droplet(inputs.droplet_id)
    if "original_size" not in ctx.recorded:
        ctx.checkpoint(original_size=droplet.size_slug)  # before acting: the undo needs it
    if droplet.size_slug != inputs.size:
        _act_unless_there(
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
    target = str(ctx.inputs["size"])
    _let_the_step_finish(
        ctx, do, droplet_id, {"resize": "resize"}, lambda: _wait_for_size(ctx, do, droplet_id, target)
    )
    droplet = _droplet_or_none(do, droplet_id)
    if droplet is None or droplet.size_slug == original:
        return
    _act_unless_there(ctx, do, droplet_id, ResizeActionRequest(size=original, disk=False), slot="undo_resize")
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
    ctx.before_write(deleting=True)
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


# -- lookups: did a pivot in doubt happen? (facts only; the runner decides, sagas.in_doubt) -----


def _our_action(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, kind: str, slot: str
) -> Action | None:
    """The step's action: recorded, or (after an unanswered POST) found among the droplet's new
    actions, looking twice a poll apart in case a late POST is still landing."""
    action_id: int | None = ctx.recorded.get(f"{slot}_id")
    if action_id is None and ctx.recorded.get(f"{slot}_posting"):
        action_id = find_our_action(ctx, do, droplet_id, kind, slot=slot)
        if action_id is None:
            ctx.sleep(ctx.services.settings.poll_max_seconds)
            action_id = find_our_action(ctx, do, droplet_id, kind, slot=slot)
    return None if action_id is None else do.get_action(action_id)


def _action_lookup(ctx: StepContext, droplet_id: int, kind: str, slot: str) -> Lookup:
    do = ctx.services.digitalocean()
    action = _our_action(ctx, do, droplet_id, kind, slot)
    if action is None:
        if ctx.recorded.get(f"{slot}_posting"):
            return Lookup(
                Found.NOT_HAPPENED, f"no {kind} action of ours among droplet {droplet_id}'s actions"
            )
        return Lookup(Found.NOT_HAPPENED, f"the {kind} was refused or never posted: no action exists")
    if action.status == "errored":
        return Lookup(Found.UNKNOWN, f"{kind} action {action.id} errored: the droplet may be half changed")
    return Lookup(Found.HAPPENED, f"{kind} action {action.id} is {action.status}")


def restore_lookup(ctx: StepContext) -> Lookup:
    return _action_lookup(ctx, RestoreInputs.model_validate(ctx.inputs).droplet_id, "restore", "restore")


def resize_lookup(ctx: StepContext) -> Lookup:
    inputs = ResizeInputs.model_validate(ctx.inputs)
    droplet = _droplet_or_none(ctx.services.digitalocean(), inputs.droplet_id)
    if droplet is not None and droplet.size_slug == inputs.size:
        return Lookup(Found.HAPPENED, f"droplet {inputs.droplet_id} is {inputs.size}")
    return _action_lookup(ctx, inputs.droplet_id, "resize", "resize")


def delete_lookup(ctx: StepContext) -> Lookup:
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    if _droplet_or_none(do, droplet_id) is None:
        return Lookup(Found.HAPPENED, f"GET /v2/droplets/{droplet_id} is 404: the droplet is gone")
    destroys = [a for a in do.list_droplet_actions(droplet_id, max_pages=1) if a.type == "destroy"]
    if destroys:
        return Lookup(Found.HAPPENED, f"droplet {droplet_id} is being destroyed (action {destroys[0].id})")
    ctx.sleep(ctx.services.settings.poll_max_seconds)  # a late DELETE may still be landing
    if _droplet_or_none(do, droplet_id) is None:
        return Lookup(Found.HAPPENED, f"droplet {droplet_id} is gone")
    return Lookup(Found.NOT_HAPPENED, f"droplet {droplet_id} still exists and nothing destroys it")


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
    lookup=resize_lookup,
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
    lookup=restore_lookup,
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
    lookup=delete_lookup,
)
