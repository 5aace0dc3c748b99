"""Waiting on the provider: capped exponential backoff, with a cancel check at every poll."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from sagas.errors import ProviderActionError
from sagas.steps import StepContext

T = TypeVar("T")


class Backoff:
    """initial, x1.6 each time, capped, with +-20% jitter so a fleet does not poll in lockstep."""

    def __init__(self, initial: float, cap: float, factor: float = 1.6) -> None:
        self._next = initial
        self._cap = cap
        self._factor = factor

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self._factor, self._cap)
        return delay * random.uniform(0.8, 1.2)


class TypicalWait:
    """How long a kind of wait usually lasts (per process), so the first poll comes when it is likely over.

    A stochastic quantile tracker per key (an action type, the snapshot listing lag): a first
    poll that finds the wait over shortens the estimate a little, one that finds it still running
    lengthens it more, so about ``quantile`` of first polls succeed. Each poll costs a request
    against the account's rate limit; a blind backoff from 1 s spends 3-4 of them per wait.

    Only a poll that went out about when it was asked to (``held``, the time the poll itself took,
    under ``ON_TIME`` of the delay) shortens the estimate: one the rate budget held back found the
    wait over because it was late, which says nothing of the estimate. Learning from those, a
    saturated fleet shrank its estimates far below the real waits, and its first polls then missed
    whenever the budget's queue happened to be short.

    A miss is also remembered as a floor: a wait that was still running ``delay`` after it began
    lasts longer than that, so the estimate does not shrink below ``MARGIN`` x the longest of the
    last ``MEMORY`` misses. Without it the tracker probed below the wait on purpose, one first poll
    in 1 / (1 - quantile): a request wasted every 20 waits when the waits hardly vary (a fleet's
    snapshots of like droplets). With it, waits of one length stop missing after the first miss
    near their length; waits that vary still miss as the quantile says, once the floor has been
    forgotten ``MEMORY`` polls later. The price is latency: up to ``MARGIN`` - 1 of the wait.
    """

    ON_TIME = 0.25
    MARGIN = 1.1
    MEMORY = 200

    def __init__(self, quantile: float = 0.95, gain: float = 0.2) -> None:
        self._quantile = quantile
        self._gain = gain
        self._estimates: dict[str, float] = {}
        self._misses: dict[str, deque[tuple[int, float]]] = {}  # (observation number, delay)
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.enabled = True

    def first_delay(self, key: str, default: float) -> float:
        with self._lock:
            return self._estimates.get(key, default)

    def observe(
        self, key: str, delay: float, over: bool, *, held: float = 0.0, floor: float, cap: float
    ) -> None:
        """The first poll, asked for ``delay`` after the wait began and answered ``held`` later,
        found it ``over`` (or not)."""
        with self._lock:
            seen = self._seen[key] = self._seen.get(key, 0) + 1
            misses = self._misses.setdefault(key, deque())
            while misses and misses[0][0] <= seen - self.MEMORY:
                misses.popleft()
            estimate = self._estimates.get(key, delay)
            if over:
                if held > self.ON_TIME * delay:
                    return  # it went out late: no evidence that the estimate was long enough
                estimate *= 1 - self._gain * (1 - self._quantile)
            else:
                misses.append((seen, delay))
                estimate *= 1 + self._gain * self._quantile
            if misses:
                estimate = max(estimate, self.MARGIN * max(d for _, d in misses))
            self._estimates[key] = min(max(estimate, floor), cap)


TYPICAL = TypicalWait()


def wait_until(
    ctx: StepContext, poll: Callable[[], T | None], *, timeout: float, what: str, typical: str | None = None
) -> T:
    """Call ``poll`` until it returns a value; between polls is a safe point for cancellation.

    With ``typical`` (a wait that has just begun, e.g. right after a POST), the first poll waits
    for the typical length of that kind of wait instead of asking at once.
    """
    settings = ctx.services.settings
    backoff = Backoff(settings.poll_initial_seconds, settings.poll_max_seconds)
    deadline = ctx.services.monotonic() + timeout
    if typical is not None and TYPICAL.enabled:
        delay = TYPICAL.first_delay(typical, settings.poll_initial_seconds)
        ctx.sleep(delay)
        # Another wait of the kind may have missed meanwhile: it lasts longer than we were told.
        while (longer := TYPICAL.first_delay(typical, delay)) > delay:
            ctx.sleep(longer - delay)
            delay = longer
        asked = ctx.services.monotonic()
        found = poll()
        TYPICAL.observe(
            typical,
            delay,
            found is not None,
            held=ctx.services.monotonic() - asked,  # the rate budget's queue, the network, the provider
            floor=settings.poll_initial_seconds / 10,
            cap=timeout / 2,
        )
        if found is not None:
            return found
        ctx.sleep(backoff.next())  # it just said "not yet": asking again at once would waste a request
    while True:
        found = poll()
        if found is not None:
            return found
        if ctx.services.monotonic() >= deadline:
            raise ProviderActionError(f"gave up waiting {timeout:.0f}s for {what}")
        ctx.sleep(backoff.next())
