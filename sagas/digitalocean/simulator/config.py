"""Simulator configuration: every timing and limit the fake DigitalOcean API uses.

Time semantics: every duration below is given in *simulated* seconds (what the real API would take) and
is multiplied by ``time_scale`` to get wall-clock seconds. ``time_scale=0.01`` makes a 2 s action finish
in 20 ms, a 3 s listing lag last 30 ms, and the 60 s / 3600 s rate-limit windows last 0.6 s / 36 s.
Headers the server reports (``ratelimit-reset``, ``retry-after``) are always in real wall-clock time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SimulatorConfig(BaseModel):
    """Timings (simulated seconds, scaled by ``time_scale``) and per-token rate limits."""

    model_config = ConfigDict(extra="forbid")

    action_seconds: float = Field(default=2.0, ge=0)
    """How long any droplet action (including create and destroy) stays ``in-progress``."""
    action_seconds_by_type: dict[str, float] = Field(default_factory=dict)
    """Per action type overrides of ``action_seconds``, e.g. ``{"snapshot": 30}``."""
    snapshot_listing_lag_seconds: float = Field(default=3.0, ge=0)
    """How long after its action completed a snapshot stays invisible in every listing and lookup."""
    snapshot_delete_linger_seconds: float = Field(default=3.0, ge=0)
    """How long a deleted snapshot keeps appearing in the listings (``GET`` by id is 404 at once)."""
    status_lag_seconds: float = Field(default=1.0, ge=0)
    """How long after a power action completed the droplet's ``status`` changes."""
    droplet_delete_linger_seconds: float = Field(default=2.0, ge=0)
    """How long a deleted droplet keeps answering ``GET`` and appearing in listings."""
    rate_limit_per_minute: int = Field(default=250, ge=1)
    rate_limit_per_hour: int = Field(default=5000, ge=1)
    time_scale: float = Field(default=1.0, gt=0)
    """Wall seconds per simulated second."""

    def wall(self, simulated_seconds: float) -> float:
        """Convert a simulated duration to wall-clock seconds."""
        return simulated_seconds * self.time_scale

    def action_wall_seconds(self, action_type: str) -> float:
        """Wall-clock duration of an action of ``action_type``."""
        return self.wall(self.action_seconds_by_type.get(action_type, self.action_seconds))

    def updated(self, patch: dict[str, Any]) -> SimulatorConfig:
        """A validated copy with the fields in ``patch`` replaced (unknown fields are rejected)."""
        return SimulatorConfig.model_validate({**self.model_dump(), **patch})
