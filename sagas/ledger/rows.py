"""Rows to models: the one place a SQLAlchemy ``Row`` (or a driver's dict row) becomes a domain model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row, literal
from sqlalchemy.dialects.postgresql import JSONB

from sagas.models import SagaRun, StepResult


def json_literal(value: Mapping[str, Any]) -> Any:
    return literal(dict(value), JSONB)


def saga_from_row(row: Row[Any] | Mapping[str, Any]) -> SagaRun:
    data = dict(row._mapping) if isinstance(row, Row) else dict(row)
    data["step_names"] = tuple(data["step_names"])
    return SagaRun.model_validate(data)


def step_from_row(row: Row[Any] | Mapping[str, Any]) -> StepResult:
    data = dict(row._mapping) if isinstance(row, Row) else dict(row)
    for extra in ("fence_cancel_requested", "completed_rows"):
        data.pop(extra, None)
    return StepResult.model_validate(data)
