"""DigitalOcean's clock, as the ``Date`` header of its responses shows it: a lower bound of its "now".

The timestamps in the provider's bodies (an action's ``started_at`` and ``completed_at``, a
snapshot's ``created_at``) come from its clock, not from this host's nor from the ledger's
(Postgres ``now()``), and those three clocks differ. A step that must compare its own moments
with the provider's timestamps (when did we post?) reads them here, on the provider's clock.

A response's ``Date`` was stamped at the provider before this process received it, so ``Date`` plus
the time this host's monotonic clock has counted since the response arrived is never later than the
provider's clock now: a lower bound, to whole seconds (``Date`` has no fraction). Only the latest
response counts: an older one would not follow a provider clock that was stepped back. One clock per
API base URL per process, fed by every client of that URL (``provider_clock_for``), so the first
request of a fresh client already knows it when any earlier one in the process had an answer.

It must never make a request of its own; nothing happens at import time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime


class ProviderClock:
    """The provider's time, from the latest ``Date`` header observed."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # (the provider's time in the latest response, this host's monotonic clock when it arrived)
        self._latest: tuple[datetime, float] | None = None

    def observe(self, date_header: str | None) -> None:
        """A response arrived with this ``Date`` header (absent or unreadable: nothing learned)."""
        if not date_header:
            return
        try:
            stamped = parsedate_to_datetime(date_header)
        except (TypeError, ValueError, IndexError):
            return
        if stamped.tzinfo is None:  # RFC 7231 dates are GMT; a naive result means "-0000"
            stamped = stamped.replace(tzinfo=UTC)
        arrived = self._monotonic()
        with self._lock:
            if self._latest is None or arrived >= self._latest[1]:
                self._latest = (stamped, arrived)

    def now_at_least(self) -> datetime | None:
        """A time the provider's clock has certainly reached, or None before any response was seen."""
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        stamped, arrived = latest
        return stamped + timedelta(seconds=max(0.0, self._monotonic() - arrived))


_registry: dict[str, ProviderClock] = {}
_registry_lock = threading.Lock()


def provider_clock_for(base_url: str) -> ProviderClock:
    """This process's clock of the API at ``base_url``, created on first use."""
    key = base_url.rstrip("/")
    with _registry_lock:
        clock = _registry.get(key)
        if clock is None:
            clock = _registry[key] = ProviderClock()
        return clock
