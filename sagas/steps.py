"""The step contract and the catalog of saga kinds.

A step is ``execute`` and ``compensate`` over a ``StepContext``, a deterministic idempotency key,
a declared reversibility, a timeout, and (for a step whose outcome can be in doubt, every pivot)
a ``lookup`` that asks the provider whether it happened: the runner decides what to do with the
answer (``sagas.in_doubt``), a step only reports facts. A kind is an ordered list of step names with
a version. The
catalog is the only way a name becomes code (DESIGN rule 8): input names a step, the catalog
looks it up, nothing is ever imported from a string. Steps themselves live in ``tasks/``; the
catalog that lists them is built there too, so this module stays free of Prefect.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from sagas.errors import InputError, SagaCancelledError, StepTimeoutError, UnknownKindError, UnknownStepError
from sagas.fields import CustomerDeploymentId, SagaId, TriggeredBy, validated
from sagas.in_doubt import Lookup
from sagas.models import NewSaga, Reversibility, SagaOptions
from sagas.services import Services

CANCEL_CHECK_SECONDS = 5.0  # the longest a cancel waits on a sleeping step
DEFAULT_STEP_TIMEOUT_SECONDS = 3600.0


@dataclass(frozen=True)
class KeyScope:
    """What an idempotency key may depend on: never the clock, never randomness."""

    saga_id: uuid.UUID
    inputs: Mapping[str, Any]
    prefix: str

    @property
    def saga8(self) -> str:
        return self.saga_id.hex[:8]


@dataclass
class StepContext:
    """What a running step sees, and its ways of talking back: checkpoints, the write marker, and the
    safe points (``check_cancel``, ``sleep``) where a cancel, a lost lease or the step's deadline
    stops it."""

    saga_id: uuid.UUID
    step_idx: int
    step_name: str
    idempotency_key: str
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Mapping[str, Any]]
    recorded: dict[str, Any]
    started_at: datetime | None
    attempt: int
    services: Services
    # (fields, writing): True marks that a write may be sent, None takes that mark back, False neither.
    record_progress: Callable[[Mapping[str, Any], bool | None], None] = field(repr=False)
    cancel_requested: Callable[[], bool] = field(repr=False)
    # When this attempt must be over (``services.monotonic`` seconds), or None: past it the step is
    # in doubt (StepTimeoutError at the next safe point) and the runner looks it up.
    deadline: float | None = None
    timeout: float | None = None
    # Whether the step may have sent a provider write, as the ledger says (this attempt or earlier).
    wrote: bool = False

    notes: dict[str, Any] = field(default_factory=dict)

    def note(self, **fields: Any) -> None:
        """Remember something for the step's result, written with it (no extra ledger write)."""
        self.notes.update(fields)

    def checkpoint(self, **fields: Any) -> None:
        """Write what the step learned (an action id) to the ledger before it goes on."""
        self.recorded.update(fields)
        self.record_progress(fields, False)

    def before_write(self, **fields: Any) -> bool:
        """Call before every provider write (POST, DELETE): records, durably and with ``fields``,
        that from now on a write may have been sent. A row without it proves nothing was sent: its
        undo is skipped, and a pivot without it has not passed the point of no return.

        Returns whether this is the step's first possible write (nothing could have been sent
        before it): only then may ``write_not_sent`` take the mark back."""
        first = not self.wrote
        self.recorded.update(fields)
        self.record_progress(fields, True)
        self.wrote = True
        return first

    def write_not_sent(self, *, first: bool, **fields: Any) -> None:
        """The write after ``before_write`` provably never took effect (the provider refused the
        request itself, or it never left this process): with ``fields`` recorded, and, when it was
        the step's ``first`` write, the mark taken back, so the ledger again proves nothing was
        sent (the undo then asks the provider nothing, a pivot may still roll back)."""
        self.recorded.update(fields)
        self.record_progress(fields, False if not first else None)
        if first:
            self.wrote = False

    def check_cancel(self) -> None:
        """A safe point: raise SagaCancelledError if a cancel was requested (LeaseLostError if the
        runner lost its lease, StepTimeoutError past the step's deadline)."""
        if self.cancel_requested():
            raise SagaCancelledError(f"saga {self.saga_id} was cancelled during {self.step_name}")
        if self.deadline is not None and self.services.monotonic() > self.deadline:
            raise StepTimeoutError(self.step_name, self.timeout or 0.0)

    def sleep(self, seconds: float) -> None:
        """Wait, checking for a cancel at least every few seconds of a long wait."""
        remaining = seconds
        while True:
            self.check_cancel()
            if remaining <= 0:
                return
            slice_ = min(remaining, CANCEL_CHECK_SECONDS)
            self.services.sleep(slice_)
            remaining -= slice_


class NoInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StepDefinition:
    name: str
    execute: Callable[[StepContext], Mapping[str, Any] | None]
    compensate: Callable[[StepContext], None]
    idempotency_key: Callable[[KeyScope], str]
    # Fixed, or decided by the inputs (a disk resize cannot be undone; a CPU/RAM resize can).
    reversibility: Reversibility | Callable[[Mapping[str, Any]], Reversibility] = Reversibility.COMPENSATABLE
    inputs_model: type[BaseModel] | None = None
    summary: str = ""
    compensation_summary: str = ""
    # How long one attempt may run before it is in doubt (a saga's options or the settings may
    # override it per step name).
    timeout_seconds: float = DEFAULT_STEP_TIMEOUT_SECONDS
    # Asks the provider whether the step's effect happened (facts only; the runner decides).
    lookup: Callable[[StepContext], Lookup] | None = None
    # Whether the step has anything to do for these inputs (DNS without a domain: recorded skipped).
    applies: Callable[[Mapping[str, Any]], bool] = lambda inputs: True
    skipped_because: str = ""

    def reversibility_for(self, inputs: Mapping[str, Any]) -> Reversibility:
        if isinstance(self.reversibility, Reversibility):
            return self.reversibility
        return self.reversibility(inputs)


@dataclass(frozen=True)
class KindDefinition:
    name: str
    version: str
    inputs_model: type[BaseModel]
    steps: tuple[str, ...] | None  # None: the caller picks registered steps (the test kind)
    summary: str = ""
    # The resource a saga of this kind acts on ("droplet:123"): one unfinished saga per resource.
    resource: Callable[[Mapping[str, Any]], str | None] = lambda inputs: None
    # A person approves before this step, the first that changes what the customer sees (None:
    # before the first step); ``asks_approval`` is the default, a saga's option overrides it.
    approval_before: str | None = None
    asks_approval: bool = False
    # Destroys or replaces what the customer runs (offboard, rollback, update): capped at so many
    # running at once per account and per customer deployment (``SAGAS_MAX_DESTRUCTIVE_*``). A
    # saga of any kind that runs a pivot step (a test saga with ``delete_droplet``) counts too.
    destructive: bool = False

    def approval_gate(self, step_names: tuple[str, ...]) -> int:
        """The index of the step a person approves, in a saga running ``step_names``."""
        if self.approval_before is not None and self.approval_before in step_names:
            return step_names.index(self.approval_before)
        return 0


class Catalog:
    """The registry of steps and kinds; lookups by name only."""

    def __init__(self, steps: Iterable[StepDefinition], kinds: Iterable[KindDefinition]) -> None:
        self._steps = {s.name: s for s in steps}
        self._kinds = {k.name: k for k in kinds}
        for kind in self._kinds.values():
            for name in kind.steps or ():
                self.step(name)

    @property
    def kind_names(self) -> list[str]:
        return list(self._kinds)

    @property
    def step_names(self) -> list[str]:
        return list(self._steps)

    def kind(self, name: str) -> KindDefinition:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(
                f"unknown saga kind {name!r}: choose one of {', '.join(sorted(self._kinds))}"
            ) from None

    def step(self, name: str) -> StepDefinition:
        try:
            return self._steps[name]
        except KeyError:
            raise UnknownStepError(
                f"unknown step {name!r}: registered steps are {', '.join(sorted(self._steps))}"
            ) from None

    def new_saga(
        self,
        kind_name: str,
        inputs: Mapping[str, Any],
        *,
        steps: Iterable[str] | None = None,
        saga_id: uuid.UUID | str | None = None,
        triggered_by: str = "manual",
        deployment_id: str | None = None,
        options: SagaOptions | Mapping[str, Any] | None = None,
    ) -> NewSaga:
        """Validate a request completely, before anything is written; raise InputError if bad.

        Every entrance (the CLI, the flows' parameters, the Python API) ends here, so these are
        the rules whoever asks: strict types (``sagas.fields``), nothing coerced, nothing stripped.
        """
        if not isinstance(kind_name, str):
            raise InputError(f"a saga kind is a name, not a {type(kind_name).__name__}")
        kind = self.kind(kind_name)
        fields = _validate(
            _RequestFields,
            {"saga_id": saga_id, "triggered_by": triggered_by, "deployment_id": deployment_id},
            "saga request",
        )
        if kind.steps is None:
            step_names = _step_names(steps)
            if not step_names:
                raise InputError(f"the {kind.name} kind needs --steps, e.g. create_droplet_snapshot,fail")
        else:
            if steps is not None and _step_names(steps) != kind.steps:
                raise InputError(
                    f"the {kind.name} kind runs {', '.join(kind.steps)}; --steps is only for the test kind"
                )
            step_names = kind.steps
        if len(set(step_names)) != len(step_names):
            raise InputError("a saga cannot run the same step twice: remove the duplicate step name")
        definitions = [self.step(name) for name in step_names]
        validated = _validate(kind.inputs_model, inputs, f"inputs for the {kind.name} kind")
        for definition in definitions:
            if definition.inputs_model is not None:
                _validate(definition.inputs_model, validated, f"inputs for step {definition.name}")
        raw_options = options.model_dump() if isinstance(options, SagaOptions) else dict(options or {})
        if raw_options.get("require_approval") is None:
            raw_options["require_approval"] = kind.asks_approval  # pinned: a later default changes nothing
        checked = {k: v for k, v in _validate(SagaOptions, raw_options, "saga options").items() if v}
        unknown = set(checked.get("step_timeouts", {})) - set(step_names)
        if unknown:
            raise InputError(
                f"step_timeouts names steps this saga does not run: {', '.join(sorted(unknown))}"
            )
        destructive = kind.destructive or any(
            d.reversibility_for(validated) is Reversibility.PIVOT for d in definitions
        )
        return NewSaga(
            id=uuid.UUID(fields["saga_id"]) if "saga_id" in fields else uuid.uuid4(),
            destructive=destructive,
            kind=kind.name,
            step_names=step_names,
            definition_version=kind.version,
            inputs=validated,
            deployment_id=fields.get("deployment_id"),
            triggered_by=fields["triggered_by"],
            resource=kind.resource(validated),
            options=checked,
        )


class _RequestFields(BaseModel):
    """What a saga request carries besides the kind's inputs (the flows' bookkeeping parameters)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    saga_id: SagaId | None = None
    triggered_by: TriggeredBy
    deployment_id: CustomerDeploymentId | None = None


def _step_names(steps: Iterable[str] | None) -> tuple[str, ...]:
    if steps is None:
        return ()
    if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
        raise InputError("steps must be a list of step names, e.g. ['create_droplet_snapshot', 'fail']")
    names = tuple(steps)
    for name in names:
        if not isinstance(name, str):
            raise InputError(f"a step is named by a string, not a {type(name).__name__}")
    return names


def droplet_resource(inputs: Mapping[str, Any]) -> str | None:
    droplet_id = inputs.get("droplet_id")
    return None if droplet_id is None else f"droplet:{droplet_id}"


def _validate(model: type[BaseModel], inputs: Mapping[str, Any], what: str) -> dict[str, Any]:
    return validated(model, inputs, what).model_dump(mode="json", exclude_none=True)
