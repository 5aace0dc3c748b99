"""Flow parameters, flat: each flow's signature generated from a strict pydantic model, in one place.

Prefect builds a deployment's run form, the body its REST API takes and the server-side check it
makes with ``enforce_parameter_schema`` (409 before a run exists) from the flow function's
signature. So a flow built here takes its inputs as separate keyword parameters, generated from
the model the runner validates with (the registry's inputs model for a saga kind):

- required inputs first, then optional ones, then the bookkeeping fields (``SagaRunFields``);
- each parameter annotated with its field's strict type from ``sagas.fields``, so the schema has
  the same patterns and bounds the runner enforces and the UI can check a value inline;
- a title and a description on each, set through ``json_schema_extra`` because Prefect overwrites
  a field's own title with the parameter's name;
- the test kind's ``steps`` as a list of registered step names: an enum in the schema, built from
  the registry, so the server refuses an unknown step before a run exists.

The body validates its keyword arguments once more with the same model, so a direct call, or a
deployment that does not enforce its schema, is refused by the same rules before anything is
written (``InputError`` naming the field).

Unknown parameter names: Prefect 3.9.1 writes no ``additionalProperties`` into a deployment's
schema (its ``ParameterSchema`` model drops the key), so a misspelt name passes the server's check.
``deployments.seal`` adds ``additionalProperties: false`` after ``prefect deploy``; a deployment
without it still fails the run at once, in Prefect's own signature check, before our body runs.

This module must never run a saga or touch the ledger: it only describes and checks parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from flows import FLOWS
from sagas.fields import CustomerDeploymentId, SagaId, TriggeredBy, validated
from sagas.steps import Catalog
from tasks.registry import catalog

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")


class SagaRunFields(BaseModel):
    """Parameters every saga flow takes after the kind's own inputs: the saga's bookkeeping."""

    model_config = ConfigDict(extra="forbid", strict=True)

    saga_id: SagaId | None = Field(
        default=None,
        title="Saga id (makes a double submission one saga)",
        description="Give the same id twice and one saga runs, not two. Leave empty for a new saga.",
    )
    triggered_by: TriggeredBy = Field(default="manual", title="Triggered by")
    deployment_id: CustomerDeploymentId | None = Field(default=None, title="Customer deployment")
    require_approval: bool | None = Field(
        default=None,
        title="Require approval",
        description="Stop for a person's approval before the first customer-visible change."
        " Empty: the kind's default (on for offboard and rollback).",
    )

    def saga_options(self) -> dict[str, Any]:
        return {} if self.require_approval is None else {"require_approval": self.require_approval}

    def saga_inputs(self) -> dict[str, Any]:
        """The kind's inputs: every field but the run fields (and ``steps``, for the test kind)."""
        return self.model_dump(exclude={*SagaRunFields.model_fields, "steps"}, exclude_none=True, mode="json")


def step_names_type(registry: Catalog | None = None) -> Any:
    """A list of registered step names, in order: an enum in the schema, from the registry."""
    names = tuple((registry or catalog()).step_names)
    step_list = _subscript(list, _subscript(Literal, names))
    return _subscript(
        Annotated, (step_list, Field(min_length=1, max_length=20, json_schema_extra={"uniqueItems": True}))
    )


@cache
def parameters_model(kind: str, registry: Catalog | None = None) -> type[SagaRunFields]:
    """The strict model of a saga kind's flow parameters: its inputs, ``steps`` (test), run fields.

    ``registry`` is the product's (``tasks.registry``) unless a benchmark brings its own steps.
    """
    definition = (registry or catalog()).kind(kind)
    extra: dict[str, Any] = {}
    if definition.steps is None:
        extra["steps"] = (
            step_names_type(registry),
            Field(
                title="Steps",
                description="Registered step names, in order, e.g. create_droplet_snapshot, fail.",
            ),
        )
    bases: Any = (definition.inputs_model, SagaRunFields)
    model: type[SagaRunFields] = create_model(
        f"{kind.capitalize()}Parameters", __base__=bases, __module__=__name__, **extra
    )
    return model


def flat_signature(model: type[BaseModel], *, last: Sequence[str] = ()) -> inspect.Signature:
    """One keyword parameter per field of ``model``: required first, optional next, ``last`` last."""
    fields = model.model_fields
    own = [name for name in fields if name not in last]
    order = [n for n in own if fields[n].is_required()] + [n for n in own if not fields[n].is_required()]
    return inspect.Signature(
        [_parameter(name, fields[name]) for name in [*order, *last]], return_annotation=dict[str, Any]
    )


def flat_function(
    model: type[M],
    body: Callable[[M], R],
    *,
    module: str,
    name: str,
    description: str,
    last: Sequence[str] = (),
) -> Callable[..., R]:
    """A function Prefect reads as taking ``model``'s fields flat; it calls ``body`` with the model.

    ``module`` and ``name`` are where the flow lives (``flows.snapshot``, ``snapshot``): Prefect
    derives a served deployment's entrypoint from them.
    """
    what = f"parameters of the {name} flow"

    def run(**parameters: Any) -> R:
        return body(validated(model, parameters, what))

    run.__signature__ = flat_signature(model, last=last)  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = name
    run.__module__ = module
    run.__doc__ = description
    return run


def saga_flow_function(
    kind: str, body: Callable[[SagaRunFields], R], description: str, registry: Catalog | None = None
) -> Callable[..., R]:
    """The function of a saga kind's flow: the kind's inputs flat, then the run fields."""
    module, attribute = FLOWS[kind]
    return flat_function(
        parameters_model(kind, registry),
        body,
        module=module,
        name=attribute,
        description=description,
        last=tuple(SagaRunFields.model_fields),
    )


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    description, examples = _documentation(field)
    schema: dict[str, Any] = {"title": field.title or name.replace("_", " ").capitalize()}
    if description:
        schema["description"] = description
    if examples:
        schema["examples"] = examples
    annotation = _subscript(Annotated, (field.annotation, *field.metadata, Field(json_schema_extra=schema)))
    # A default that is a FieldInfo would reach the body as itself: give Prefect the value.
    default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _documentation(field: FieldInfo) -> tuple[str | None, list[Any] | None]:
    """A field's description and examples: its own, or those of its type inside ``X | None``."""
    description, examples = field.description, field.examples
    for member in get_args(field.annotation):
        if get_origin(member) is Annotated:
            for info in get_args(member)[1:]:
                if isinstance(info, FieldInfo):
                    description = description or info.description
                    examples = examples or info.examples
    return description, examples


def _subscript(form: Any, arguments: Any) -> Any:
    """``form[arguments]`` for a type made at run time (a type checker cannot follow those)."""
    return form[arguments]
