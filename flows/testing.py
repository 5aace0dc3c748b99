"""The test saga: runs registered steps chosen by the caller, e.g. ``create_droplet_snapshot,fail``.

It replays the seed's live smoke: a real snapshot, a step that fails, and the rollback. Its
``steps`` parameter is a list of registered step names (an enum in the deployment's schema).
"""

from __future__ import annotations

from flows.saga_flow import saga_flow

test_saga = saga_flow("test", "Run registered steps chosen by the caller (smoke tests).")
