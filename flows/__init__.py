"""One Prefect flow per saga kind, one module each. ``flow_for`` maps a kind to its flow."""

from __future__ import annotations

import importlib
from typing import Any

# kind -> (module, flow attribute). Kinds come from the registry; nothing from input is ever
# imported: an unknown kind is refused before this table is read. A flow's parameters are the
# kind's inputs, flat (flows.parameters.parameters_model).
FLOWS: dict[str, tuple[str, str]] = {
    "provision": ("flows.provision", "provision"),
    "suspend": ("flows.suspend", "suspend"),
    "resume": ("flows.resume", "resume"),
    "update": ("flows.update", "update"),
    "rollback": ("flows.rollback", "rollback"),
    "offboard": ("flows.offboard", "offboard"),
    "snapshot": ("flows.snapshot", "snapshot"),
    "test": ("flows.testing", "test_saga"),
}


def flow_for(kind: str) -> Any:
    """The flow of a kind (imported on demand: Prefect is slow to load)."""
    if kind not in FLOWS:
        from sagas.errors import UnknownKindError

        raise UnknownKindError(f"no flow for saga kind {kind!r}: choose one of {', '.join(FLOWS)}")
    module_name, flow_name = FLOWS[kind]
    return getattr(importlib.import_module(module_name), flow_name)
