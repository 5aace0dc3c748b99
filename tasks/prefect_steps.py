"""Runs each step's execute and compensate as its own Prefect task run.

The runner calls ``invoke_as_task`` instead of the step function; the step's context reaches the
task through a context variable, not as task parameters, so nothing of it (settings, clients) is
recorded by Prefect. Retries belong to one layer only (the client and the runner's policies):
these tasks themselves never retry.

Each step is *submitted* and waited for from the flow's main thread. A cancel on a process worker
arrives as SIGTERM, which Prefect turns into ``TerminationSignal`` raised in the main thread
wherever it is: here, while it waits. The step itself, on its task thread, is not interrupted (no
half-written ledger row, no Crashed task run): ``when_terminated`` says what to do instead (record
a cancel request in the ledger), and the wait goes on until the step stops at its next safe point
(or finishes, if it is past the point of no return).

A Prefect ``Task`` is built once per (step, phase, position) and reused: building one inspects the
function's signature and source, a few milliseconds that a saga would otherwise pay on every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any, TypeVar, cast

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal

from sagas.invocation import Phase
from sagas.steps import StepContext, StepDefinition

T = TypeVar("T")

# The call the next task run makes: set by invoke_as_task around the task call, per thread and
# per asyncio context, so concurrent sagas in one process each see their own.
_call: ContextVar[Callable[[], Any]] = ContextVar("arcadia_step_call")
_on_termination: ContextVar[Callable[[], None] | None] = ContextVar("arcadia_on_termination", default=None)


@contextmanager
def when_terminated(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, a TerminationSignal that arrives during a step calls ``callback`` (once) and
    the step is waited for, instead of being abandoned mid-flight."""
    token = _on_termination.set(callback)
    try:
        yield
    finally:
        _on_termination.reset(token)


def invoke_as_task(step: StepDefinition, phase: Phase, fn: Callable[[StepContext], T], ctx: StepContext) -> T:
    token = _call.set(lambda: fn(ctx))
    try:
        future = _step_task(step.name, phase, ctx.step_idx).submit()
    finally:
        _call.reset(token)
    told = False
    while True:
        try:
            return cast(T, future.result())
        except TerminationSignal:
            callback = _on_termination.get()
            if callback is None:
                raise
            if not told:
                told = True
                callback()


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
