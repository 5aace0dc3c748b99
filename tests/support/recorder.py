"""Steps that record what the runner asks of them, for the runner's rule tests (no provider).

Each ``Recorder`` step appends ``execute:<name>`` / ``compensate:<name>`` / ``lookup:<name>`` to
``calls`` and can be told to fail, crash (a BaseException standing for a process dying mid-step),
be refused before any write, or run a hook while it runs. A step calls ``ctx.before_write()``
first, as a step that changes the world does, unless it is in ``never_writes``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from sagas.errors import ProviderNotFoundError, ProviderRejectedError
from sagas.in_doubt import Found, Lookup
from sagas.ledger.store import Ledger
from sagas.models import Reversibility
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings
from sagas.steps import Catalog, KindDefinition, StepContext, StepDefinition


class AnyInputs(BaseModel):
    model_config = ConfigDict(extra="allow")


class Crash(BaseException):
    """Stands for a process dying mid-step: not an Exception, so nothing handles it."""


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_execute: set[str] = set()
        self.fail_execute_times: dict[str, int] = {}
        self.crash_execute: set[str] = set()
        self.fail_compensate: dict[str, int] = {}
        self.not_found_compensate: set[str] = set()
        self.during: dict[str, Any] = {}
        self.never_writes: set[str] = set()
        self.refuse_execute: set[str] = set()
        self.compensate_during: dict[str, Any] = {}
        # What a lookup of the step finds (a pivot in doubt is looked up): a Lookup, or an error to raise.
        self.lookups: dict[str, Lookup | Exception] = {}

    def step(self, name: str, reversibility: Reversibility = Reversibility.COMPENSATABLE) -> StepDefinition:
        def execute(ctx: StepContext) -> Mapping[str, Any]:
            self.calls.append(f"execute:{name}")
            if name in self.refuse_execute:  # the provider refused the request itself: nothing sent
                raise ProviderRejectedError(f"{name} refused", status_code=422)
            if name not in self.never_writes:
                ctx.before_write()  # these steps stand for steps that change the world
            if name in self.during:
                self.during[name](ctx)
            if name in self.crash_execute:
                self.crash_execute.discard(name)
                raise Crash(name)
            if name in self.fail_execute:
                raise RuntimeError(f"{name} broke")
            if self.fail_execute_times.get(name, 0) > 0:
                self.fail_execute_times[name] -= 1
                raise RuntimeError(f"{name} broke for now")
            return {"made": f"{name}-{ctx.idempotency_key}"}

        def compensate(ctx: StepContext) -> None:
            self.calls.append(f"compensate:{name}")
            if name in self.compensate_during:
                self.compensate_during[name](ctx)
            if name in self.not_found_compensate:
                raise ProviderNotFoundError("already gone", status_code=404)
            left = self.fail_compensate.get(name, 0)
            if left:
                self.fail_compensate[name] = left - 1
                raise RuntimeError(f"undo of {name} broke")

        def lookup(ctx: StepContext) -> Lookup:
            self.calls.append(f"lookup:{name}")
            found = self.lookups.get(name, Lookup(Found.UNKNOWN, "nothing arranged"))
            if isinstance(found, Exception):
                raise found
            return found

        return StepDefinition(
            name=name,
            execute=execute,
            compensate=compensate,
            idempotency_key=lambda scope, name=name: f"{scope.prefix}-{name}-{scope.saga_id.hex}",
            reversibility=reversibility,
            lookup=lookup,
        )


def make_catalog(recorder: Recorder, steps: tuple[str, ...] = ("a", "b", "c"), version: str = "1") -> Catalog:
    return Catalog(
        steps=[*(recorder.step(n) for n in ("a", "b", "c", "d")), recorder.step("p", Reversibility.PIVOT)],
        kinds=[
            KindDefinition(name="chain", version=version, inputs_model=AnyInputs, steps=steps),
            KindDefinition(name="pivoting", version="1", inputs_model=AnyInputs, steps=("a", "p", "c")),
        ],
    )


def make_runner(ledger: Ledger, settings: Settings, catalog: Catalog) -> Runner:
    return Runner(ledger, catalog, Services(settings, sleep=lambda s: None))


def new_saga(ledger: Ledger, catalog: Catalog) -> uuid.UUID:
    saga, _ = ledger.create_saga(catalog.new_saga("chain", {"x": 1}))
    return saga.id


def step_statuses(ledger: Ledger, saga_id: uuid.UUID) -> dict[str, str]:
    return {s.step_name: s.status.value for s in ledger.list_step_results(saga_id)}
