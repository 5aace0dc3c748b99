"""The rollback saga. Safety snapshot, power off, restore from a snapshot (point of no return), power on.

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

rollback = saga_flow(
    "rollback",
    "Safety snapshot, power off, restore from a snapshot (point of no return), power on.",
)
