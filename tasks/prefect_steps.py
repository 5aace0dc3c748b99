"""Runs each step's execute and compensate as its own Prefect task run.

The runner calls ``invoke_as_task`` instead of the step function; the step's context travels in
a closure, not as task parameters, so nothing of it (settings, clients) is recorded by Prefect.
Retries belong to one layer only: the client retries transient reads, the runner retries
compensations; these tasks themselves never retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from sagas.runner import Phase
from sagas.steps import StepContext, StepDefinition

T = TypeVar("T")


def invoke_as_task(step: StepDefinition, phase: Phase, fn: Callable[[StepContext], T], ctx: StepContext) -> T:
    def run_step() -> T:
        return fn(ctx)

    run_step.__name__ = f"{step.name}_{phase.value}"
    as_task = task(
        name=f"{step.name}.{phase.value}",
        task_run_name=f"{step.name}.{phase.value}[{ctx.step_idx}]",
        retries=0,
        cache_policy=NO_CACHE,
        persist_result=False,
        log_prints=False,
    )(run_step)
    result: T = as_task()
    return result
