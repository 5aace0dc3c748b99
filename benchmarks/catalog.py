"""A benchmark-only catalog: the product's catalog plus ``noop_0`` .. ``noop_<n-1>``, distinct no-op steps.

A saga cannot run the same step twice, so a saga of N no-op steps needs N names. Nothing here is
registered in the product.
"""

from __future__ import annotations

from functools import cache

from sagas.steps import Catalog, KeyScope, StepDefinition
from tasks.basic import nothing_to_undo
from tasks.registry import catalog as product_catalog

MAX_NOOPS = 60


def _key(i: int) -> object:
    def key(scope: KeyScope) -> str:
        return f"{scope.prefix}-noop{i}-{scope.saga_id.hex}"

    return key


def noop_names(n: int) -> list[str]:
    return [f"noop_{i}" for i in range(n)]


@cache
def bench_catalog() -> Catalog:
    base = product_catalog()
    noops = [
        StepDefinition(
            name=f"noop_{i}",
            execute=lambda ctx: {},
            compensate=nothing_to_undo,
            idempotency_key=_key(i),  # type: ignore[arg-type]
            summary="does nothing (benchmark)",
        )
        for i in range(MAX_NOOPS)
    ]
    steps = [base.step(name) for name in base.step_names] + noops
    kinds = [base.kind(name) for name in base.kind_names]
    return Catalog(steps=steps, kinds=kinds)
