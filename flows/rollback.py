"""The rollback saga. Safety snapshot, power off, restore from a snapshot (point of no return), power on."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import RollbackInputs


class RollbackParameters(RollbackInputs, SagaRunFields):
    """Inputs named as DigitalOcean names things, plus the saga run's own fields."""


rollback = saga_flow(
    "rollback",
    RollbackParameters,
    "Safety snapshot, power off, restore from a snapshot (point of no return), power on.",
)
