"""The update saga. Snapshot, power off, resize, power on a droplet."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import UpdateInputs


class UpdateParameters(UpdateInputs, SagaRunFields):
    """Inputs named as DigitalOcean names things, plus the saga run's own fields."""


update = saga_flow("update", UpdateParameters, "Snapshot, power off, resize, power on a droplet.")
