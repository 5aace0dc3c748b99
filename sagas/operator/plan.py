"""``sagas plan``: what a saga of a kind would do, which names it would use, how each step is undone.

Computed from the catalog alone: it touches neither the provider nor the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from sagas.models import Reversibility
from sagas.steps import Catalog, KeyScope


class StepPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    reversibility: Reversibility
    # None for a skipped step: it never touches the provider, so no name is ever looked up.
    idempotency_key: str | None
    does: str
    compensation: str
    # Why the step has nothing to do for these inputs (it is recorded ``skipped``), or None.
    skipped: str | None = None


class SagaPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    placeholder_saga_id: uuid.UUID
    kind: str
    definition_version: str
    inputs: dict[str, Any]
    resource: str | None
    steps: list[StepPlan]


def plan_saga(
    catalog: Catalog,
    kind: str,
    inputs: Mapping[str, Any],
    *,
    steps: Sequence[str] | None,
    prefix: str,
    saga_id: uuid.UUID | None = None,
) -> SagaPlan:
    """Validate the request as ``sagas run`` would and describe it; writes nothing anywhere.

    Names are computed with a fresh placeholder saga id: a real run gets its own id, so the last
    8 hex of each name will differ, the rest will not.
    """
    new = catalog.new_saga(kind, inputs, steps=steps, saga_id=saga_id or uuid.uuid4(), triggered_by="plan")
    scope = KeyScope(saga_id=new.id, inputs=new.inputs, prefix=prefix)
    planned = []
    past_pivot = False
    for idx, name in enumerate(new.step_names):
        step = catalog.step(name)
        reversibility = step.reversibility_for(new.inputs)
        if not step.applies(new.inputs):
            why = step.skipped_because or "nothing to do for these inputs"
            planned.append(
                StepPlan(
                    index=idx,
                    name=name,
                    reversibility=reversibility,
                    idempotency_key=None,
                    does=f"nothing: skipped ({why})",
                    compensation="nothing to undo",
                    skipped=why,
                )
            )
            continue
        if reversibility is Reversibility.PIVOT:
            undo = "none: the point of no return; a failure from here on is retried forward"
        elif past_pivot:
            undo = "not undone: after the pivot this step is retried forward until it succeeds"
        else:
            undo = step.compensation_summary or "(not described)"
        planned.append(
            StepPlan(
                index=idx,
                name=name,
                reversibility=reversibility,
                idempotency_key=step.idempotency_key(scope),
                does=step.summary or "(not described)",
                compensation=undo,
            )
        )
        past_pivot |= reversibility is Reversibility.PIVOT
    return SagaPlan(
        placeholder_saga_id=new.id,
        kind=new.kind,
        definition_version=new.definition_version,
        inputs=new.inputs,
        resource=new.resource,
        steps=planned,
    )
