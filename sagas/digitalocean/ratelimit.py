"""A request budget per DigitalOcean token, so concurrent sagas never see a 429, and which requests go first.

DigitalOcean counts every request against its token for one minute (250) and one hour (5,000),
each request expiring on its own timer. ``RateBudget`` keeps the same two sliding windows in this
process: ``acquire()`` blocks until one more request fits in both, then counts it. ``observe()``,
called with each response's headers in the thread that acquired, counts that request again from
the moment its response arrived (the provider counted it when it arrived, which may be well after
``acquire()`` on a busy machine; counting from the response is never early), and tightens the
budget to ``ratelimit-remaining`` / ``ratelimit-reset`` / ``retry-after``, which also count requests
made elsewhere with the same token; it never loosens the local windows. The budgets the client
uses (``budget_for_token``) keep counting a request that has not been answered yet for as long
as it is in flight (``in_flight``): it may reach the provider late, after waiting for a
connection, and the provider counts it from its arrival.

**Priorities.** ``request_priority(Priority.COMPENSATION)`` marks the requests made inside it (a
context variable: it follows the code into Prefect task runs of the same thread, not into new
threads). Waiting requests are served most urgent first, first come first served within a
priority, and each priority may fill only part of each window (``RESERVES``); the rest is kept
spare for the priorities above it, so a rollback started while the fleet saturates the budget
does not queue behind the fleet:

- ``COMPENSATION`` may fill both windows;
- ``INTERACTIVE`` (the default: sagas a person started) the whole minute and 95% of the hour
  (250 of 5,000 requests an hour are kept for compensations);
- ``SCHEDULED`` (the fleet) 96% of the minute and 80% of the hour (10 of 250 requests a minute,
  1,000 of 5,000 an hour are kept for the others).

Reserves round down, so a tiny limit keeps none.

``budget_for_token()`` hands every client of one token in this process the same budget. The one
budget shared by every process and machine is ``shared_budget.SharedRateBudget``, which keeps the
same rules in a store. Registries key by a hash of the token: the token itself is never stored
here. Nothing happens at import time.

Why one file: the priorities, their reserves, the provider's signals and the turns are the rules
``RateBudget`` applies under its one lock, and ``shared_budget`` takes the same pieces from here.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from pydantic import SecretStr

MINUTE = 60.0
HOUR = 3600.0
GUARD_SECONDS = 1.0  # see RateBudget: covers the send latency and its jitter (1.7% of a minute)
# How long (real seconds) a request not answered yet keeps counting after its window: longer than
# any request the client makes (its timeout, 30 s by default), so in practice until its answer.
IN_FLIGHT_SECONDS = 60.0


class Priority(IntEnum):
    """Whose request it is; a lower value is served first."""

    COMPENSATION = 0  # undoing: a rollback, a failed saga's compensations
    INTERACTIVE = 1  # sagas a person started (UI, CLI, API)
    SCHEDULED = 2  # scheduled work (the nightly fleet)


# Share of the (minute, hour) windows kept out of reach of each priority, for the ones above it.
RESERVES: Mapping[Priority, tuple[float, float]] = {
    Priority.COMPENSATION: (0.0, 0.0),
    Priority.INTERACTIVE: (0.0, 0.05),
    Priority.SCHEDULED: (0.04, 0.20),
}

_priority: ContextVar[Priority] = ContextVar("arcadia_request_priority", default=Priority.INTERACTIVE)


def current_priority() -> Priority:
    """The priority of requests made here and now (``INTERACTIVE`` unless set)."""
    return _priority.get()


@contextmanager
def request_priority(priority: Priority) -> Iterator[Priority]:
    """Requests made inside this block (this thread, this context) wait with ``priority``."""
    token = _priority.set(Priority(priority))
    try:
        yield Priority(priority)
    finally:
        _priority.reset(token)


def ceilings(per_minute: int, per_hour: int, priority: Priority) -> tuple[int, int]:
    """How many requests of ``priority`` may be in the minute and the hour window (``RESERVES``)."""
    minute_reserve, hour_reserve = RESERVES[priority]
    # The epsilon keeps 250 * 0.04 from rounding down to 9 through float error.
    return (
        max(1, per_minute - math.floor(per_minute * minute_reserve + 1e-9)),
        max(1, per_hour - math.floor(per_hour * hour_reserve + 1e-9)),
    )


class RequestBudget(Protocol):
    """What the client needs of a budget: ``acquire()`` before each request it sends, then
    ``observe(headers)`` in the same thread once the response is in."""

    def acquire(self) -> float: ...

    def observe(self, headers: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class RateSignal:
    """What one response's headers say about the provider's own count."""

    remaining: int | None = None  # requests left (``ratelimit-remaining``) ...
    reset_in: float | None = None  # ... for this many seconds (``ratelimit-reset``); None: unknown
    pause: float | None = None  # a burst 429's ``retry-after``: nothing at all for this long


def read_rate_headers(headers: Mapping[str, str], wall_now: float) -> RateSignal | None:
    """The rate-limit headers of a response, or None when it carries none we can read."""
    lowered = {key.lower(): value for key, value in headers.items()}
    if "retry-after" in lowered:
        # A burst 429: the hourly count says nothing about when the minute frees up.
        try:
            return RateSignal(pause=max(0.0, float(lowered["retry-after"])))
        except ValueError:
            return RateSignal(pause=MINUTE)  # an HTTP date or garbage: hold a whole minute
    try:
        remaining = max(0, int(lowered["ratelimit-remaining"]))
    except (KeyError, ValueError):
        return None
    try:
        reset_in: float | None = max(0.0, float(lowered["ratelimit-reset"]) - wall_now)
    except (KeyError, ValueError):
        reset_in = None
    return RateSignal(remaining=remaining, reset_in=reset_in)


class ProviderSignal:
    """The provider's latest word, held until it lapses: a pause, or at most N more requests."""

    def __init__(self) -> None:
        self.pause_until = 0.0
        self.allowance: int | None = None
        self.allowance_until = 0.0

    def apply(self, signal: RateSignal, now: float, default_reset: float) -> None:
        if signal.pause is not None:
            self.pause_until = max(self.pause_until, now + signal.pause)
        elif signal.remaining is not None:
            self.allowance = signal.remaining
            reset_in = signal.reset_in if signal.reset_in is not None else default_reset
            self.allowance_until = now + reset_in

    def delay(self, now: float) -> float:
        """Seconds until the provider allows one more request (0: it does now)."""
        delay = max(0.0, self.pause_until - now)
        if self.allowance is not None:
            if now >= self.allowance_until:
                self.allowance = None
            elif self.allowance <= 0:
                delay = max(delay, self.allowance_until - now)
        return delay

    def spend(self) -> None:
        if self.allowance is not None:
            self.allowance -= 1


class Turns:
    """Requests waiting for a budget, in the order they are served: most urgent first, then first
    come. Wakes only the requests whose turn may have come, never every waiter (200 threads woken
    on every request would starve everything else of the CPU). The caller holds its own lock
    around every call; waiting on ``event(me)`` happens outside it."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []
        self._events: dict[tuple[int, int], threading.Event] = {}
        self._arrivals = itertools.count()
        self._mine = threading.local()  # a thread waits for one turn at a time: its event is reused

    def join(self, priority: Priority) -> tuple[int, int]:
        me = (int(priority), next(self._arrivals))
        heapq.heappush(self._heap, me)
        event: threading.Event | None = getattr(self._mine, "event", None)
        if event is None:
            event = self._mine.event = threading.Event()
        self._events[me] = event
        return me

    def leave(self, me: tuple[int, int]) -> None:
        if self._events.pop(me, None) is None:
            return
        if self._heap[0] == me:
            heapq.heappop(self._heap)
        else:
            self._heap.remove(me)
            heapq.heapify(self._heap)

    def ahead_of(self, me: tuple[int, int]) -> int:
        return sum(1 for waiter in self._heap if waiter < me)

    def first(self, me: tuple[int, int]) -> bool:
        return bool(self._heap) and self._heap[0] == me

    def waiting(self, priority: Priority) -> int:
        return sum(1 for p, _ in self._heap if p == priority)

    def __len__(self) -> int:
        return len(self._heap)

    def ready_to_wait(self, me: tuple[int, int]) -> threading.Event:
        """The event ``me`` waits on, cleared: a wake after this (under the lock) is not lost."""
        event = self._events[me]
        event.clear()
        return event

    def wake(self, count: int = 1) -> None:
        for waiter in heapq.nsmallest(count, self._heap):
            self._events[waiter].set()


class RateBudget:
    """Two sliding windows of requests (per minute, per hour) shared by threads; thread-safe.

    ``scale`` shrinks both windows (``scale=0.01`` makes a minute 0.6 s) so tests can exercise real
    waiting quickly. ``clock`` (monotonic seconds), ``wall_clock`` (Unix seconds, to read
    ``ratelimit-reset``) and ``sleep`` are injectable for the same reason; a thread waiting for a
    more urgent one to go first waits on a condition in real time.

    ``in_flight`` (real seconds): a request let through but not answered yet may still be on its
    way (waiting for a connection, say), and the provider counts it from when it arrives; such a
    request keeps counting for up to this long past its window, until ``observe()`` counts it
    from its answer. 0 (the default) counts every request from when it was let through.
    """

    def __init__(
        self,
        per_minute: int = 250,
        per_hour: int = 5000,
        *,
        scale: float = 1.0,
        guard: float = 0.0,
        in_flight: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute < 1 or per_hour < 1:
            raise ValueError("a rate budget needs at least one request per window")
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.per_minute = per_minute
        self.per_hour = per_hour
        # ``guard`` (seconds, scaled too) lengthens each window: a request is counted here before it
        # is sent but by the provider when it arrives, so a budget that releases a request the very
        # instant the oldest one expires here meets a 429 whenever that one arrived later.
        self._minute = (MINUTE + guard) * scale
        self._hour = (HOUR + guard) * scale
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last_minute: deque[float] = deque()
        self._last_hour: deque[float] = deque()
        # When each request not answered yet was let through, oldest first.
        self._flying: list[float] = []
        self._in_flight_for = in_flight
        self._signal = ProviderSignal()
        self._turns = Turns()
        # Per thread: when its last request was counted, until its response is observed.
        self._in_flight = threading.local()

    def acquire(self) -> float:
        """Block until one more request of the current priority fits the budget and no more
        urgent request waits; count it, and return the clock reading at which it was counted."""
        priority = current_priority()
        with self._lock:
            now = self._clock()
            if not self._turns and self._delay_locked(now, priority) <= 0:
                # Nobody waits and the request fits: the common case, without queueing.
                return self._count_locked(now)
            me = self._turns.join(priority)
        try:
            while True:
                with self._lock:
                    now = self._clock()
                    delay = self._delay_locked(now, priority)
                    if not self._turns.first(me):
                        # Someone more urgent (or earlier) goes first; it wakes us when it has.
                        turn = self._turns.ready_to_wait(me)
                    elif delay <= 0:
                        self._turns.leave(me)
                        self._turns.wake()
                        return self._count_locked(now)
                    else:
                        turn = None
                # Wait without the lock so other threads can count and observe meanwhile.
                if turn is not None:
                    turn.wait(timeout=1.0)
                else:
                    self._sleep(delay)
        except BaseException:
            with self._lock:
                self._turns.leave(me)
                self._turns.wake()
            raise

    def _count_locked(self, now: float) -> float:
        self._last_minute.append(now)
        self._last_hour.append(now)
        if self._in_flight_for > 0:
            self._flying.append(now)
        self._signal.spend()
        self._in_flight.counted_at = now
        return now

    def observe(self, headers: Mapping[str, str]) -> None:
        """The response to this thread's last request is in: count that request from now, and
        tighten the budget from the response's rate-limit headers."""
        self.answered(read_rate_headers(headers, self._wall_clock()))

    def answered(self, signal: RateSignal | None) -> None:
        """``observe()`` with the headers already read."""
        counted_at: float | None = getattr(self._in_flight, "counted_at", None)
        self._in_flight.counted_at = None
        with self._lock:
            now = self._clock()
            if counted_at is not None:
                index = bisect.bisect_left(self._flying, counted_at)
                if index < len(self._flying) and self._flying[index] == counted_at:
                    del self._flying[index]
                for window in (self._last_minute, self._last_hour):
                    _recount(window, counted_at, now)
            if signal is not None:
                self._signal.apply(signal, now, self._minute)

    def pending_delay(self) -> float:
        """Seconds until one more request of the current priority would fit (0 when it fits
        now); counts nothing and ignores other waiters."""
        with self._lock:
            return max(0.0, self._delay_locked(self._clock(), current_priority()))

    def _delay_locked(self, now: float, priority: Priority) -> float:
        # Requests never answered (a caller that does not observe) stop counting at last.
        forget = bisect.bisect_right(self._flying, now - self._minute - self._in_flight_for)
        del self._flying[:forget]
        delays = [self._signal.delay(now)]
        ceiling = ceilings(self.per_minute, self.per_hour, priority)
        for window, length, limit in (
            (self._last_minute, self._minute, ceiling[0]),
            (self._last_hour, self._hour, ceiling[1]),
        ):
            while window and window[0] + length <= now:
                window.popleft()
            # Unanswered requests that left the window still count: they may have arrived late.
            overdue = bisect.bisect_right(self._flying, now - length)
            if len(window) + overdue >= limit:
                if limit - overdue >= 1:
                    delays.append(window[-(limit - overdue)] + length - now)
                else:  # only answers can free the window: look again soon
                    delays.append(length / 20)
        return max(delays)


def _recount(window: deque[float], counted_at: float, now: float) -> None:
    """Move one request counted at ``counted_at`` to ``now``; the window stays in time order.

    In flight requests are the newest, so the search runs from the right. One that expired from
    the window meanwhile is counted again all the same: the provider may have counted it later.
    """
    for i in range(len(window) - 1, -1, -1):
        if window[i] == counted_at:
            del window[i]
            break
        if window[i] < counted_at:
            break
    window.append(now)


_registry: dict[str, RateBudget] = {}
_registry_lock = threading.Lock()


def token_key(token: SecretStr) -> str:
    """What budgets are keyed by, here and in the shared store: a hash, never the token."""
    return hashlib.sha256(token.get_secret_value().encode()).hexdigest()


def budget_for_token(
    token: SecretStr, per_minute: int = 250, per_hour: int = 5000, *, scale: float = 1.0
) -> RateBudget:
    """This process's one budget for this token (and these limits), created on first use.

    The provider's limit is per token, not per caller: every client of the token shares it.
    ``scale`` is for simulators whose time runs faster (their windows shrink with it). Processes
    that share a store share one budget across them: ``shared_budget.shared_budget_for_token``.
    """
    key = f"{token_key(token)}:{per_minute}:{per_hour}:{scale}"
    with _registry_lock:
        budget = _registry.get(key)
        if budget is None:
            budget = _registry[key] = RateBudget(
                per_minute, per_hour, scale=scale, guard=GUARD_SECONDS, in_flight=IN_FLIGHT_SECONDS
            )
        return budget
