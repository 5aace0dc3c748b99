"""Steps with no provider behind them: ``fail``, for the test kind and smoke tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagas.errors import StepFailedError
from sagas.models import Reversibility
from sagas.steps import KeyScope, StepContext, StepDefinition


def fail(ctx: StepContext) -> Mapping[str, Any]:
    raise StepFailedError(ctx.step_name, "the fail step always fails (it exists to test rollback)")


def nothing_to_undo(ctx: StepContext) -> None:
    """``fail`` changed nothing, so its undo has nothing to do."""


FAIL = StepDefinition(
    name="fail",
    execute=fail,
    compensate=nothing_to_undo,
    idempotency_key=lambda scope: f"{scope.prefix}-fail-{scope.saga_id.hex}",
    reversibility=Reversibility.COMPENSATABLE,
    summary="always fails, to exercise compensation",
    compensation_summary="nothing to undo",
)


def _noop_key(scope: KeyScope) -> str:
    return f"{scope.prefix}-noop-{scope.saga_id.hex}"


NOOP = StepDefinition(
    name="noop",
    execute=lambda ctx: {},
    compensate=nothing_to_undo,
    idempotency_key=_noop_key,
    summary="does nothing (benchmarks and tests)",
    compensation_summary="nothing to undo",
)


def flaky(ctx: StepContext) -> Mapping[str, Any]:
    """Fails its first two attempts, then succeeds: a transient fault, for forward retries."""
    if ctx.attempt <= 2:
        raise StepFailedError(ctx.step_name, f"flaky attempt {ctx.attempt} fails (it exists to test retries)")
    return {"attempts_needed": ctx.attempt}


FLAKY = StepDefinition(
    name="flaky",
    execute=flaky,
    compensate=nothing_to_undo,
    idempotency_key=lambda scope: f"{scope.prefix}-flaky-{scope.saga_id.hex}",
    summary="fails twice, then succeeds (tests forward retries)",
    compensation_summary="nothing to undo",
)
