"""One Prefect flow per saga kind. ``FLOWS`` maps a kind to its flow and parameter model."""

from __future__ import annotations

from typing import Any


def flow_for(kind: str) -> tuple[Any, type[Any]]:
    """The flow and its parameter model for a kind (imported on demand: Prefect is slow to load)."""
    if kind == "snapshot":
        from flows.snapshot import SnapshotParameters, snapshot

        return snapshot, SnapshotParameters
    if kind == "test":
        from flows.testing import TestParameters, test_saga

        return test_saga, TestParameters
    from sagas.errors import UnknownKindError

    raise UnknownKindError(f"no flow for saga kind {kind!r}: choose snapshot or test")
