"""The provision saga. Create a droplet (tagged with the saga) and its DNS record; undone in reverse on failure.

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

provision = saga_flow(
    "provision",
    "Create a droplet (tagged with the saga) and its DNS record; undone in reverse on failure.",
)
