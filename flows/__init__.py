"""One Prefect flow per saga kind, one module each. ``flow_for`` maps a kind to its flow."""

from __future__ import annotations

import importlib
from typing import Any

# kind -> (module, flow attribute, parameters class). Kinds come from the registry; nothing
# from input is ever imported: an unknown kind is refused before this table is read.
FLOWS: dict[str, tuple[str, str, str]] = {
    "provision": ("flows.provision", "provision", "ProvisionParameters"),
    "suspend": ("flows.suspend", "suspend", "SuspendParameters"),
    "resume": ("flows.resume", "resume", "ResumeParameters"),
    "update": ("flows.update", "update", "UpdateParameters"),
    "rollback": ("flows.rollback", "rollback", "RollbackParameters"),
    "offboard": ("flows.offboard", "offboard", "OffboardParameters"),
    "snapshot": ("flows.snapshot", "snapshot", "SnapshotParameters"),
    "test": ("flows.testing", "test_saga", "TestParameters"),
}


def flow_for(kind: str) -> tuple[Any, type[Any]]:
    """The flow and its parameter model for a kind (imported on demand: Prefect is slow to load)."""
    if kind not in FLOWS:
        from sagas.errors import UnknownKindError

        raise UnknownKindError(f"no flow for saga kind {kind!r}: choose one of {', '.join(FLOWS)}")
    module_name, flow_name, params_name = FLOWS[kind]
    module = importlib.import_module(module_name)
    return getattr(module, flow_name), getattr(module, params_name)
