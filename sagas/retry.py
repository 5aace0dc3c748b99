"""The one retry policy every layer uses: which errors, how many tries, how long in all.

One retry layer per call path. A call retried by the client, again by the step and again by the
runner multiplies: 5 x 4 DELETEs, or 5 x 1800 s of waiting, before anyone gives up. So each call path
has exactly one ``RetryPolicy`` around it, and every policy is bounded twice: by ``attempts`` and by
``deadline`` (seconds from the first try; a wait that would end past it is never started). What is
retried is named, never implied: ``on`` is required.

``sleep`` and ``clock`` are the test switches (pass a recorder, not a patch); the runner passes an
interruptible sleep so that a cancel request is seen during a wait. Time used is the larger of the
clock's elapsed time and the time this policy slept, so a recording ``sleep`` that does not advance
the clock still meets the deadline.

This module is part of the core: it must never import Prefect, ``flows`` or ``tasks``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# An exception class, a tuple of them, or a predicate (as stamina's ``on=``).
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

# 2 ** 64 times any sensible base delay is past every cap; higher powers would overflow a float.
_MAX_EXPONENT = 64


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Call a function until it succeeds, it raises something ``on`` does not name, or the attempts
    or the deadline run out; then the last error is re-raised unchanged.

    >>> policy = RetryPolicy(on=ConnectionError, attempts=3, deadline=10.0, sleep=lambda s: None)
    >>> policy.run(lambda: "done")
    'done'
    """

    on: RetryOn
    attempts: int = 4
    deadline: float | None = 30.0
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"a retry policy needs attempts >= 1, not {self.attempts!r}")
        if self.base_delay < 0 or self.max_delay < 0 or (self.deadline is not None and self.deadline < 0):
            raise ValueError("a retry policy needs non-negative delays and deadline")
        on: Any = self.on
        classes = on if isinstance(on, tuple) else (on,) if isinstance(on, type) else None
        if classes is not None and not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes
        ):
            raise TypeError("a retry policy's on= takes exception classes or a predicate")
        if classes is None and not callable(on):
            raise TypeError("a retry policy's on= takes exception classes or a predicate")

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is one of the errors this policy retries (limits aside)."""
        on: Any = self.on
        # A class is callable too (it would build an exception, which is truthy): test it first.
        if isinstance(on, type | tuple):
            return isinstance(exc, on)
        return bool(on(exc))

    def backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th failure (1-based): capped exponential, equal jitter,
        so a fleet that failed together does not come back together."""
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        capped = min(self.max_delay, self.base_delay * 2.0**exponent)
        return capped / 2 + random.uniform(0, capped / 2)

    def run(
        self, fn: Callable[[], T], *, on_retry: Callable[[BaseException, int, float], None] | None = None
    ) -> T:
        """``fn()``'s result. Before each retry, ``on_retry(error, failures so far, delay)`` is
        called (to log it, or to count it in a test) and then ``sleep(delay)``.

        Only ``Exception`` is ever retried: KeyboardInterrupt and SystemExit pass straight through.
        """
        started = self.clock()
        slept = 0.0
        failures = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                failures += 1
                delay = self._delay_before_retry(exc, failures, self.clock() - started, slept)
                if delay is None:
                    raise
                if on_retry is not None:
                    on_retry(exc, failures, delay)
            # Outside the handler: a cancel raised by an interruptible sleep does not drag the
            # provider's error along as its context.
            self.sleep(delay)
            slept += delay

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def _delay_before_retry(
        self, exc: Exception, failures: int, elapsed: float, slept: float
    ) -> float | None:
        if failures >= self.attempts or not self.retries(exc):
            return None
        delay = self.backoff(failures)
        if self.deadline is not None and max(elapsed, slept) + delay > self.deadline:
            return None
        return delay
