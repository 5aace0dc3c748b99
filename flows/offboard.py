"""The offboard saga. Final snapshot (kept), power off, delete the DNS record, delete the droplet (point of no return).

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

offboard = saga_flow(
    "offboard",
    "Final snapshot (kept), power off, delete the DNS record, delete the droplet (point of no return).",
)
