"""Droplet actions, performed once: post, record the action id at once, poll to the end.

Every droplet action a step takes goes through ``perform_droplet_action``. It records
``<slot>_posting`` with the write marker (``ctx.before_write``) before every POST and
``<slot>_id`` right after, so a runner that dies anywhere resumes by polling the same action. After
a POST whose outcome is unknown (no response, an unreadable 2xx) it looks for the action before it
would ever post again, and how it tells its own action from a neighbour's of the same type depends
on the action:

- one that makes something named by the step (a snapshot) passes ``find_ours``, which looks for
  what the name made; nothing is read before the POST (every request counts against the account's
  rate limit), and the write marker records ``<slot>_posted_after``, a time on the provider's clock
  (``DigitalOceanClient.provider_time``) that the step's first POST cannot have preceded;
- any other (power, shutdown, resize, restore: nothing in them is the step's alone, and a
  neighbour's action of the same type may start seconds before ours) reads the droplet's recent
  actions before its first POST (``<slot>_known``): only an action not among them can be ours.

A 422 "pending event" (another action runs) is waited out, not failed, for at most
``pending_event_wait_seconds`` (the shared ``sagas.retry.RetryPolicy``: the one retry layer of that
wait; the client does not retry a 422).

``action_lookup`` answers whether a pivot's action happened (facts for ``sagas.in_doubt``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import Action, DropletActionRequest
from sagas.errors import (
    AmbiguousWriteError,
    PendingEventError,
    ProviderActionError,
    ProviderNotReachedError,
    ProviderRejectedError,
    ProviderResponseError,
    ProviderUnavailableError,
)
from sagas.in_doubt import Found, Lookup
from sagas.retry import RetryPolicy
from sagas.steps import StepContext
from tasks.waiting import Backoff, wait_until

# How far before our step's start a provider action may have started and still be ours:
# the clocks of the ledger and of the provider differ a little.
CLOCK_SKEW = timedelta(seconds=30)
MAX_UNANSWERED_POSTS = 3
# pending_event_wait_seconds bounds the wait; this only keeps a zero poll interval from spinning.
PENDING_EVENT_MAX_TRIES = 10_000

# After an unanswered POST: the id of our action if one landed, None once it is certain that none
# did (then the step posts again). It may poll until it can tell, and may raise to end the step
# another way (the snapshot step, when what the POST made is already there).
FindOurs = Callable[[], int | None]


def perform_droplet_action(
    ctx: StepContext,
    do: DigitalOceanClient,
    droplet_id: int,
    request: Any,
    *,
    slot: str = "action",
    find_ours: FindOurs | None = None,
) -> Action:
    """Run one droplet action to completion, exactly once; raise if it ends ``errored``."""
    fresh = ctx.recorded.get(f"{slot}_id") is None and not ctx.recorded.get(f"{slot}_posting")
    action_id = start_droplet_action(ctx, do, droplet_id, request, slot=slot, find_ours=find_ours)
    # A wait that starts with our POST can learn how long this type of action usually takes.
    action = wait_for_action(ctx, do, action_id, typical=f"action:{request.type}" if fresh else None)
    # The provider's own timing of the wait, for the saga's timeline; saved with the step's result.
    ctx.note(**{f"{slot}_started_at": action.started_at.isoformat()})
    if action.completed_at is not None:
        ctx.note(**{f"{slot}_completed_at": action.completed_at.isoformat()})
    if action.status == "errored":
        raise ProviderActionError(f"{request.type} action {action_id} on droplet {droplet_id} errored")
    return action


def start_droplet_action(
    ctx: StepContext,
    do: DigitalOceanClient,
    droplet_id: int,
    request: Any,
    *,
    slot: str = "action",
    find_ours: FindOurs | None = None,
) -> int:
    """The id of our action: recorded, adopted after an unanswered POST, or freshly posted."""
    recorded: int | None = ctx.recorded.get(f"{slot}_id")
    if recorded is not None:
        return recorded
    unanswered = 1 if ctx.recorded.get(f"{slot}_posting") else 0
    settings = ctx.services.settings
    backoff = Backoff(settings.poll_initial_seconds, settings.poll_max_seconds)

    def adopt() -> int | None:
        if find_ours is None:
            return adopt_action(ctx, do, droplet_id, request.type, slot=slot)
        action_id = find_ours()
        if action_id is not None:
            ctx.checkpoint(**{f"{slot}_id": action_id, f"{slot}_adopted": True})
        return action_id

    firsts: list[bool] = []  # whether each POST of this action was the step's first write

    def post_once() -> int:
        """Adopt or post. A PendingEventError applied nothing: the policy below waits it out and
        comes back here, where an earlier POST that landed late (the pending event itself) is found."""
        nonlocal unanswered
        while True:
            if unanswered:
                # An earlier POST may have landed late: adopt its action rather than post again.
                adopted = adopt()
                if adopted is not None:
                    return adopted
                if unanswered > MAX_UNANSWERED_POSTS:
                    raise AmbiguousWriteError(
                        f"{MAX_UNANSWERED_POSTS} {request.type} POSTs for droplet {droplet_id} went"
                        " unanswered and none shows up among its actions"
                    )
            first = ctx.before_write(
                **_write_marker(ctx, do, droplet_id, request.type, slot, named=find_ours is not None)
            )
            firsts.append(first)
            try:
                action = do.post_droplet_action(droplet_id, request)
            except PendingEventError:
                raise
            except (ProviderUnavailableError, ProviderNotReachedError):
                # It never reached the provider (not sent, or something else answered): nothing applied.
                _forget_post_unless_unanswered(ctx, slot, unanswered, first=firsts[0])
                raise
            except ProviderResponseError:
                # A 2xx we could not read: the write happened. Adopt it; never post again.
                adopted = adopt()
                if adopted is None:
                    raise
                return adopted
            except AmbiguousWriteError:
                # Not a retry of the same outcome: the loop's top looks for the action before any
                # new POST, and MAX_UNANSWERED_POSTS bounds how often that can happen.
                unanswered += 1
                ctx.sleep(backoff.next())
                continue
            except ProviderRejectedError:
                _forget_post_unless_unanswered(ctx, slot, unanswered, first=firsts[0])
                raise
            ctx.checkpoint(**{f"{slot}_id": action.id})
            return action.id

    # Another action runs on the droplet: wait for it, for at most pending_event_wait_seconds, at
    # poll pace, checking for a cancel while waiting. The deadline, not the count, is the bound.
    wait_out_pending_events = RetryPolicy(
        on=PendingEventError,
        attempts=PENDING_EVENT_MAX_TRIES,
        deadline=settings.pending_event_wait_seconds,
        base_delay=settings.poll_initial_seconds,
        max_delay=settings.poll_max_seconds,
        sleep=ctx.sleep,
        clock=ctx.services.monotonic,
    )
    try:
        return wait_out_pending_events.run(post_once)
    except PendingEventError:
        _forget_post_unless_unanswered(ctx, slot, unanswered, first=bool(firsts) and firsts[0])
        raise


def _write_marker(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, action_type: str, slot: str, *, named: bool
) -> dict[str, Any]:
    """What the write marker records before a POST: that it may be sent, and what will tell our action
    from a neighbour's if its answer never comes (see the module docstring)."""
    fields: dict[str, Any] = {f"{slot}_posting": True}
    if named:
        if f"{slot}_posted_after" not in ctx.recorded:
            # Once, before the first POST: every POST of this step comes later. On the provider's
            # clock, the one that stamps the started_at and created_at it will be compared with;
            # None when this process has had no answer from the provider yet (no time bound then).
            at = do.provider_time()
            fields[f"{slot}_posted_after"] = None if at is None else at.isoformat()
    elif f"{slot}_known" not in ctx.recorded:
        # What already ran on the droplet: after an unanswered POST, only an action that is not
        # among these can be ours (clocks cannot tell a neighbour's action from ours).
        fields[f"{slot}_known"] = [
            a.id for a in do.list_droplet_actions(droplet_id, max_pages=1) if a.type == action_type
        ]
    return fields


def _forget_post_unless_unanswered(ctx: StepContext, slot: str, unanswered: int, *, first: bool) -> None:
    """A definite refusal (or a POST that never reached the provider) applied nothing: the undo need
    not hunt for an action that never was, and when it was the step's first write, the ledger again
    proves the step sent nothing."""
    if not unanswered:
        ctx.write_not_sent(first=first, **{f"{slot}_posting": False})


def adopt_action(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, action_type: str, *, slot: str = "action"
) -> int | None:
    action_id = find_our_action(ctx, do, droplet_id, action_type, slot=slot)
    if action_id is not None:
        ctx.checkpoint(**{f"{slot}_id": action_id, f"{slot}_adopted": True})
    return action_id


def find_our_action(
    ctx: StepContext, do: DigitalOceanClient, droplet_id: int, action_type: str, *, slot: str = "action"
) -> int | None:
    """The newest action of this type on the droplet that was not there before our POST."""
    known = set(ctx.recorded.get(f"{slot}_known", []))
    since: datetime | None = ctx.started_at
    for action in do.list_droplet_actions(droplet_id, max_pages=2):
        if action.type != action_type or action.status == "errored" or action.id in known:
            continue
        if since is None or action.started_at >= since - CLOCK_SKEW:
            return action.id
    return None


def wait_for_action(
    ctx: StepContext, do: DigitalOceanClient, action_id: int, *, typical: str | None = None
) -> Action:
    def poll() -> Action | None:
        action = do.get_action(action_id)
        return action if action.status != "in-progress" else None

    return wait_until(
        ctx,
        poll,
        timeout=ctx.services.settings.action_timeout_seconds,
        what=f"action {action_id} to finish",
        typical=typical,
    )


__all__ = [
    "DropletActionRequest",
    "FindOurs",
    "perform_droplet_action",
    "start_droplet_action",
    "wait_for_action",
]


# -- did a pivot's action happen? (facts only; the runner decides, sagas.in_doubt) ----------


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


def action_lookup(ctx: StepContext, droplet_id: int, kind: str, slot: str) -> Lookup:
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
