"""The resume saga. Power a droplet on.

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

resume = saga_flow("resume", "Power a droplet on.")
