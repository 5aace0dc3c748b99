"""Waiting on the provider: capped exponential backoff, with a cancel check at every poll."""

from __future__ import annotations

import random
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


def wait_until(ctx: StepContext, poll: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Call ``poll`` until it returns a value; between polls is a safe point for cancellation."""
    settings = ctx.services.settings
    backoff = Backoff(settings.poll_initial_seconds, settings.poll_max_seconds)
    deadline = ctx.services.monotonic() + timeout
    while True:
        found = poll()
        if found is not None:
            return found
        if ctx.services.monotonic() >= deadline:
            raise ProviderActionError(f"gave up waiting {timeout:.0f}s for {what}")
        ctx.sleep(backoff.next())
