"""Power and size: steps that undo each other (power off/on, resize).

Each finds its own work at the provider before it acts: a power state by the droplet's status, a
resize by its size, an action by its recorded id (``tasks.actions``). DigitalOcean refuses (422) a
power or resize action whose end state the droplet already has; a step that meets that refusal has
its goal, and says so in its result instead of failing. A resize that grows the disk is a pivot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, StrictBool

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import (
    PowerOffActionRequest,
    PowerOnActionRequest,
    ResizeActionRequest,
    ShutdownActionRequest,
)
from sagas.errors import ProviderActionError, ProviderRejectedError
from sagas.fields import COMMON_SIZES, SizeSlug
from sagas.in_doubt import Found, Lookup
from sagas.models import Reversibility
from sagas.steps import StepContext, StepDefinition
from tasks.actions import action_lookup, find_our_action, perform_droplet_action, wait_for_action
from tasks.droplets import DropletInputs, droplet_id_of, droplet_or_none, step_key, wait_for_status
from tasks.waiting import wait_until


class ResizeInputs(DropletInputs):
    size: SizeSlug = Field(
        description="The new size slug, e.g. s-2vcpu-4gb. Common: " + ", ".join(COMMON_SIZES) + "."
    )
    resize_disk: StrictBool = Field(
        default=False, description="Grow the disk too: permanent, so the resize becomes a pivot."
    )


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
            wait_for_status(ctx, do, droplet_id, "off", settings.shutdown_timeout_seconds)
            return {"droplet_id": droplet_id, "was_on": ctx.recorded["was_on"]}
        except ProviderActionError:
            ctx.checkpoint(forced=True)  # the guest did not shut down in time: pull the plug
    # The shutdown may still take effect between its timeout and this POST: then it is refused.
    forced = _act_unless_there(ctx, do, droplet_id, PowerOffActionRequest(), slot="power_off")
    wait_for_status(ctx, do, droplet_id, "off", settings.action_timeout_seconds)
    return {"droplet_id": droplet_id, "was_on": ctx.recorded["was_on"], "forced": forced}


def power_on(ctx: StepContext) -> Mapping[str, Any]:
    droplet_id = droplet_id_of(ctx)
    do = ctx.services.digitalocean()
    droplet = do.get_droplet(droplet_id)
    if "was_off" not in ctx.recorded:
        ctx.checkpoint(was_off=droplet.status != "active")
    if droplet.status != "active":
        _act_unless_there(ctx, do, droplet_id, PowerOnActionRequest(), slot="power_on")
        wait_for_status(ctx, do, droplet_id, "active", ctx.services.settings.action_timeout_seconds)
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
        lambda: wait_for_status(ctx, do, droplet_id, "off", timeout),
    )
    droplet = droplet_or_none(do, droplet_id)
    if droplet is None or droplet.status == "active":
        return
    _act_unless_there(ctx, do, droplet_id, PowerOnActionRequest(), slot="undo_power_on")
    wait_for_status(ctx, do, droplet_id, "active", ctx.services.settings.action_timeout_seconds)


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
        lambda: wait_for_status(ctx, do, droplet_id, "active", timeout),
    )
    droplet = droplet_or_none(do, droplet_id)
    if droplet is None or droplet.status == "off":
        return
    _act_unless_there(ctx, do, droplet_id, PowerOffActionRequest(), slot="undo_power_off")
    wait_for_status(ctx, do, droplet_id, "off", ctx.services.settings.action_timeout_seconds)


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
    droplet = droplet_or_none(do, droplet_id)
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


def resize_lookup(ctx: StepContext) -> Lookup:
    inputs = ResizeInputs.model_validate(ctx.inputs)
    droplet = droplet_or_none(ctx.services.digitalocean(), inputs.droplet_id)
    if droplet is not None and droplet.size_slug == inputs.size:
        return Lookup(Found.HAPPENED, f"droplet {inputs.droplet_id} is {inputs.size}")
    return action_lookup(ctx, inputs.droplet_id, "resize", "resize")


POWER_OFF = StepDefinition(
    name="power_off_droplet",
    execute=power_off,
    compensate=undo_power_off,
    idempotency_key=step_key("power-off"),
    summary="shutdown, then power_off after a timeout; wait for status off",
    compensation_summary="power it back on if it was on",
)
POWER_ON = StepDefinition(
    name="power_on_droplet",
    execute=power_on,
    compensate=undo_power_on,
    idempotency_key=step_key("power-on"),
    summary="power on; wait for status active",
    compensation_summary="power it back off if it was off",
)
RESIZE = StepDefinition(
    name="resize_droplet",
    execute=resize,
    compensate=undo_resize,
    idempotency_key=step_key("resize"),
    reversibility=resize_reversibility,
    inputs_model=ResizeInputs,
    summary="resize to the new size (the droplet must be off)",
    compensation_summary="resize back to the recorded size (a disk resize is a pivot: no undo)",
    lookup=resize_lookup,
)
