"""The update saga. Snapshot, power off, resize, power on a droplet.

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

update = saga_flow("update", "Snapshot, power off, resize, power on a droplet.")
