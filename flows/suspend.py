"""The suspend saga. Snapshot a droplet, then power it off."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import SuspendInputs


class SuspendParameters(SuspendInputs, SagaRunFields):
    """Inputs named as DigitalOcean names things, plus the saga run's own fields."""


suspend = saga_flow("suspend", SuspendParameters, "Snapshot a droplet, then power it off.")
