"""The offboard saga. Final snapshot (kept), power off, delete the DNS record, delete the droplet (point of no return)."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import OffboardInputs


class OffboardParameters(OffboardInputs, SagaRunFields):
    """Inputs named as DigitalOcean names things, plus the saga run's own fields."""


offboard = saga_flow(
    "offboard",
    OffboardParameters,
    "Final snapshot (kept), power off, delete the DNS record, delete the droplet (point of no return).",
)
