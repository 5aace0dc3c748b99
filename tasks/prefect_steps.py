"""Runs each step's execute and compensate as its own Prefect task run.

The runner calls ``invoke_as_task`` instead of the step function; the step's context reaches the
task through a context variable, not as task parameters, so nothing of it (settings, clients) is
recorded by Prefect. Retries belong to one layer only: the client retries transient reads, the
runner retries compensations; these tasks themselves never retry.

A Prefect ``Task`` is built once per (step, phase, position) and reused: building one inspects the
function's signature and source, a few milliseconds that a saga would otherwise pay on every step.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from typing import Any, TypeVar, cast

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from sagas.invocation import Phase
from sagas.steps import StepContext, StepDefinition

T = TypeVar("T")

# The call the next task run makes: set by invoke_as_task around the task call, per thread and
# per asyncio context, so concurrent sagas in one process each see their own.
_call: ContextVar[Callable[[], Any]] = ContextVar("arcadia_step_call")


def invoke_as_task(step: StepDefinition, phase: Phase, fn: Callable[[StepContext], T], ctx: StepContext) -> T:
    token = _call.set(lambda: fn(ctx))
    try:
        result = cast(T, _step_task(step.name, phase, ctx.step_idx)())
    finally:
        _call.reset(token)
    return result


@cache
def _step_task(name: str, phase: Phase, idx: int) -> Task[[], Any]:
    def run_step() -> Any:
        return _call.get()()

    run_step.__name__ = run_step.__qualname__ = f"{name}_{phase.value}"
    return task(
        name=f"{name}.{phase.value}",
        task_run_name=f"{name}.{phase.value}[{idx}]",
        retries=0,
        cache_policy=NO_CACHE,
        persist_result=False,
        log_prints=False,
    )(run_step)
