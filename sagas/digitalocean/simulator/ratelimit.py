"""Per-token sliding-window rate limits with DigitalOcean's headers.

Each accepted request counts against its token for one (scaled) minute and one (scaled) hour after it
was made. ``ratelimit-limit`` is the hourly limit, ``ratelimit-remaining`` what is left of the hourly
budget (0 on any 429, as the real API reports a burst 429), and ``ratelimit-reset`` the Unix time at
which the oldest counted request expires. A burst (per-minute) 429 also carries ``retry-after``: whole
seconds, at least 1, until the oldest request of the minute window expires. Rejected requests do not
count.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

MINUTE = 60.0
HOUR = 3600.0


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int | None = None

    def headers(self) -> dict[str, str]:
        out = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(self.reset),
        }
        if self.retry_after is not None:
            out["retry-after"] = str(self.retry_after)
        return out


class RateLimiter:
    """Sliding windows of request times (``time.monotonic``), one deque per token."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    @staticmethod
    def _unix(mono: float, now: float) -> int:
        return math.ceil(time.time() + (mono - now))

    def hit(self, token: str, *, per_minute: int, per_hour: int, time_scale: float) -> RateDecision:
        """Count one request for ``token`` if it is within both limits, and say how it went."""
        minute, hour = MINUTE * time_scale, HOUR * time_scale
        with self._lock:
            now = time.monotonic()
            hits = self._hits.setdefault(token, deque())
            while hits and hits[0] <= now - hour:
                hits.popleft()
            in_minute = len(hits) - bisect.bisect_right(hits, now - minute)
            if len(hits) >= per_hour:
                return RateDecision(False, per_hour, 0, self._unix(hits[0] + hour, now))
            if in_minute >= per_minute:
                oldest_in_minute = hits[len(hits) - in_minute]
                wait = max(1, math.ceil(oldest_in_minute + minute - now))
                return RateDecision(False, per_hour, 0, self._unix(hits[0] + hour, now), wait)
            hits.append(now)
            return RateDecision(True, per_hour, per_hour - len(hits), self._unix(hits[0] + hour, now))

    def peek(self, token: str | None, *, per_hour: int, time_scale: float) -> RateDecision:
        """The headers for a response that does not count (a 401, an injected fault)."""
        hour = HOUR * time_scale
        with self._lock:
            now = time.monotonic()
            hits = self._hits.get(token or "", deque())
            live = [h for h in hits if h > now - hour]
            reset = self._unix(live[0] + hour, now) if live else math.ceil(time.time())
            return RateDecision(True, per_hour, max(0, per_hour - len(live)), reset)
