"""A shared request budget per DigitalOcean token, so concurrent sagas in one process never see a 429.

DigitalOcean counts every request against its token for one minute (250) and one hour (5,000),
each request expiring on its own timer. ``RateBudget`` keeps the same two sliding windows locally:
``acquire()`` blocks until one more request fits in both, then counts it. ``observe()`` reads the
``ratelimit-remaining`` / ``ratelimit-reset`` headers of each response, which also count requests
made by other processes with the same token, and tightens the budget to them; it never loosens the
local windows.

``budget_for_token()`` hands every client of one token the same budget. It keys its registry by a
hash of the token: the token itself is never stored here. Nothing happens at import time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from pydantic import SecretStr

MINUTE = 60.0
HOUR = 3600.0
GUARD_SECONDS = 1.0  # see RateBudget: covers the send latency and its jitter (1.7% of a minute)


class RateBudget:
    """Two sliding windows of requests (per minute, per hour) shared by threads; thread-safe.

    ``scale`` shrinks both windows (``scale=0.01`` makes a minute 0.6 s) so tests can exercise real
    waiting quickly. ``clock`` (monotonic seconds), ``wall_clock`` (Unix seconds, to read
    ``ratelimit-reset``) and ``sleep`` are injectable for the same reason.
    """

    def __init__(
        self,
        per_minute: int = 250,
        per_hour: int = 5000,
        *,
        scale: float = 1.0,
        guard: float = 0.0,
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
        # From the provider's headers: at most `_allowance` more requests until `_allowance_until`.
        self._allowance: int | None = None
        self._allowance_until = 0.0

    def acquire(self) -> float:
        """Block until one more request fits the budget, count it, and return the clock reading
        at which it was counted."""
        while True:
            with self._lock:
                now = self._clock()
                delay = self._delay_locked(now)
                if delay <= 0:
                    self._last_minute.append(now)
                    self._last_hour.append(now)
                    if self._allowance is not None:
                        self._allowance -= 1
                    return now
            # Sleep without the lock so other threads can count and observe meanwhile; re-check after.
            self._sleep(delay)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Tighten the budget from a response's ``ratelimit-remaining`` and ``ratelimit-reset``."""
        lowered = {key.lower(): value for key, value in headers.items()}
        try:
            remaining = int(lowered["ratelimit-remaining"])
        except (KeyError, ValueError):
            return
        try:
            if "retry-after" in lowered:  # a burst 429: the hourly reset says nothing about the minute
                reset_in = max(0.0, float(lowered["retry-after"]))
            else:
                reset_in = max(0.0, float(lowered["ratelimit-reset"]) - self._wall_clock())
        except (KeyError, ValueError):
            # Without a reset time, hold the provider's count for the shortest window.
            reset_in = self._minute
        with self._lock:
            self._allowance = max(0, remaining)
            self._allowance_until = self._clock() + reset_in

    def pending_delay(self) -> float:
        """Seconds until one more request would fit (0 when it fits now); counts nothing."""
        with self._lock:
            return max(0.0, self._delay_locked(self._clock()))

    def _delay_locked(self, now: float) -> float:
        for window, length in ((self._last_minute, self._minute), (self._last_hour, self._hour)):
            while window and window[0] + length <= now:
                window.popleft()
        delays = [0.0]
        if len(self._last_minute) >= self.per_minute:
            delays.append(self._last_minute[-self.per_minute] + self._minute - now)
        if len(self._last_hour) >= self.per_hour:
            delays.append(self._last_hour[-self.per_hour] + self._hour - now)
        if self._allowance is not None:
            if now >= self._allowance_until:
                self._allowance = None
            elif self._allowance <= 0:
                delays.append(self._allowance_until - now)
        return max(delays)


_registry: dict[str, RateBudget] = {}
_registry_lock = threading.Lock()


def _token_key(token: SecretStr) -> str:
    return hashlib.sha256(token.get_secret_value().encode()).hexdigest()


def budget_for_token(
    token: SecretStr, per_minute: int = 250, per_hour: int = 5000, *, scale: float = 1.0
) -> RateBudget:
    """The one budget of this token (and these limits) in this process, created on first use.

    The provider's limit is per token, not per caller: every client of the token shares it.
    ``scale`` is for simulators whose time runs faster (their windows shrink with it).
    """
    key = f"{_token_key(token)}:{per_minute}:{per_hour}:{scale}"
    with _registry_lock:
        budget = _registry.get(key)
        if budget is None:
            budget = _registry[key] = RateBudget(per_minute, per_hour, scale=scale, guard=GUARD_SECONDS)
        return budget
