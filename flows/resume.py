"""The resume saga. Power a droplet on."""

from __future__ import annotations

from flows.saga_flow import SagaRunFields, saga_flow
from tasks.registry import ResumeInputs


class ResumeParameters(ResumeInputs, SagaRunFields):
    """Inputs named as DigitalOcean names things, plus the saga run's own fields."""


resume = saga_flow("resume", ResumeParameters, "Power a droplet on.")
