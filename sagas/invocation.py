"""How the runner calls a step's function, and how it reads a step's failure.

``Invoke`` is the seam where Prefect enters: the runner calls ``invoke(step, phase, fn, ctx)``
and flows pass one that runs ``fn`` as a Prefect task run (``tasks/prefect_steps.py``); the core
runs it directly. ``NOT_RETRIED`` names what no runner loop retries.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from sagas.errors import (
    ConfigurationError,
    DefinitionMismatchError,
    IdempotencyConflictError,
    InputError,
    LeaseLostError,
    LedgerError,
    ProviderUnavailableError,
    RateLimitedError,
    SagaError,
)
from sagas.steps import StepContext, StepDefinition

T = TypeVar("T")


class Phase(StrEnum):
    EXECUTE = "execute"
    COMPENSATE = "compensate"


Invoke = Callable[[StepDefinition, Phase, Callable[[StepContext], T], StepContext], T]


def invoke_directly(
    step: StepDefinition, phase: Phase, fn: Callable[[StepContext], T], ctx: StepContext
) -> T:
    return fn(ctx)


def describe(exc: BaseException) -> str:
    """An error's text for the ledger: type and message, bounded. Never a traceback with locals."""
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, SagaError):
        text = f"{type(exc).__name__}: {text}"
    return text[:2000]


# Errors a loop of the runner never retries: its own infrastructure (the runner stops), a request
# that is wrong as sent, or what the provider client has already retried (one retry layer per
# call path), or a deadline that has passed.
NOT_RETRIED = (
    LeaseLostError,
    LedgerError,
    ConfigurationError,
    InputError,
    ProviderUnavailableError,
    RateLimitedError,
    IdempotencyConflictError,
    DefinitionMismatchError,
)
