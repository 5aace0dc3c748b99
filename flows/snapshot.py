"""The snapshot saga: one droplet snapshot, deleted again if the saga rolls back.

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

snapshot = saga_flow("snapshot", "Snapshot one droplet; deleted again if the saga rolls back.")
