"""The suspend saga. Snapshot a droplet, then power it off.

Its parameters are the registry's inputs of the kind, flat (``flows.parameters``).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

suspend = saga_flow("suspend", "Snapshot a droplet, then power it off.")
