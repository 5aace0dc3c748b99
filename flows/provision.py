"""The provision saga. Create a droplet (tagged with the saga) and its DNS record; undone in reverse on failure."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import ProvisionInputs


class ProvisionParameters(ProvisionInputs, SagaRunFields):
    """Inputs named as DigitalOcean names things, plus the saga run's own fields."""


provision = saga_flow(
    "provision",
    ProvisionParameters,
    "Create a droplet (tagged with the saga) and its DNS record; undone in reverse on failure.",
)
