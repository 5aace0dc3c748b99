"""The seed's context functions (``ArcadiaCloud.Provisioning``), in Python.

``start_saga`` records a saga and launches its flow run; ``create_saga`` records one without
launching (the seed's test harness needed that to avoid two runners; here the lease makes the
race harmless anyway). Every input is validated by the catalog before a row is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from sagas.errors import InputError, SagaNotFoundError
from sagas.fields import EXAMPLE_SAGA_ID, CustomerDeploymentId, QueueName, SagaId, validated
from sagas.ledger.store import Ledger
from sagas.models import Admission, DestructiveCaps, SagaRun, SagaStatus, StepResult
from sagas.steps import Catalog

Launcher = Callable[[SagaRun], None]


class _QueueField(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    queue: QueueName


_SAGA_ID: TypeAdapter[uuid.UUID] = TypeAdapter(SagaId)
# The shortest prefix taken for a saga id: 8 hex digits, as the resource names carry
# (``arcadia-snap-<droplet>-<saga8>``); shorter ones would match too often to be worth typing.
SHORTEST_PREFIX = 8
_MOST_SHOWN = 10
_UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_DEPLOYMENT_ID: TypeAdapter[str] = TypeAdapter(CustomerDeploymentId)


def parse_saga_id(value: str | uuid.UUID) -> uuid.UUID:
    """A saga id: a UUID, or its canonical text exactly (nothing stripped, never empty)."""
    try:
        return _SAGA_ID.validate_python(value)
    except ValidationError:
        # Quoted only when short and printable: a long value may be a token pasted in the wrong place.
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 and value.isprintable() else "that"
        raise InputError(
            f"{shown} is not a saga id: a saga id is a UUID such as {EXAMPLE_SAGA_ID} (see `sagas list`)"
        ) from None


def saga_id_or_start(value: str | uuid.UUID) -> uuid.UUID | str:
    """A whole saga id, or the start of one: its lowercase hex digits (8 to 32 of them), given as
    hex digits alone or as the start of the UUID's text (dashes only where the text has them).

    Checks the shape only, so a command can refuse a malformed id before it reaches the ledger.
    """
    if not isinstance(value, str) or len(value) == len(_UUID_SHAPE):
        return parse_saga_id(value)  # a whole id (or not an id at all: refused, saying why)
    dashed = len(value) < len(_UUID_SHAPE) and all(
        (c == "-") == (shape == "-") for c, shape in zip(value, _UUID_SHAPE, strict=False)
    )
    digits = value.replace("-", "") if dashed else value
    if not 0 < len(digits) <= 32 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return parse_saga_id(value)  # refused, saying what a saga id looks like
    if len(digits) < SHORTEST_PREFIX:
        raise InputError(
            f"{value!r} is too short to find a saga by: give at least {SHORTEST_PREFIX} hex digits"
            " of its id (see `sagas list`)"
        )
    return digits.lower()


def parse_queue_name(value: str) -> str:
    """A queue's name as ``sagas worker --queue`` and the ledger take it (``sagas.fields.QueueName``)."""
    return validated(_QueueField, {"queue": value}, "queue name").queue


class Provisioning:
    def __init__(
        self,
        ledger: Ledger,
        catalog: Catalog,
        launch: Launcher | None = None,
        caps: DestructiveCaps | None = None,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self._launch = launch
        self.caps = caps  # the caps on destructive sagas; None: each saga's runner applies them

    def create_saga(
        self,
        kind: str,
        inputs: Mapping[str, Any],
        *,
        steps: Iterable[str] | None = None,
        saga_id: uuid.UUID | None = None,
        deployment_id: str | None = None,
        triggered_by: str = "manual",
        flow_run_id: uuid.UUID | None = None,
        retry_of: uuid.UUID | None = None,
        options: Mapping[str, Any] | None = None,
        queue: str | None = None,
        queued_by: uuid.UUID | None = None,
        admission: Admission = Admission.REFUSE,
    ) -> SagaRun:
        """Record the saga (nothing runs); the same id again returns the recorded one.

        ``flow_run_id`` links it to the Prefect flow run that drives it, in the same write;
        ``retry_of`` to the rolled-back saga it replaces (Prefect's Retry of that flow run);
        ``queue`` puts it on a queue for ``sagas worker --queue`` processes, ``queued_by`` names
        the flow run that watches it. A destructive saga over the caps is refused with
        DestructiveCapError and nothing written (``Admission.REFUSE``), or recorded waiting for a
        place (``Admission.WAIT``).
        """
        new = self.catalog.new_saga(
            kind,
            inputs,
            steps=steps,
            saga_id=saga_id,
            triggered_by=triggered_by,
            deployment_id=deployment_id,
            options=options,
        )
        if flow_run_id is not None and not isinstance(flow_run_id, uuid.UUID):
            raise InputError("flow_run_id must be a UUID (the Prefect flow run's id)")
        if retry_of is not None and not isinstance(retry_of, uuid.UUID):
            raise InputError("retry_of must be a UUID (the id of the saga it replaces)")
        if queued_by is not None and not isinstance(queued_by, uuid.UUID):
            raise InputError("queued_by must be a UUID (the Prefect flow run's id)")
        if queue is not None:
            queue = parse_queue_name(queue)
        new = new.model_copy(
            update={"flow_run_id": flow_run_id, "retry_of": retry_of, "queue": queue, "queued_by": queued_by}
        )
        saga, _created = self.ledger.create_saga(new, admission=admission, caps=self.caps)
        return saga

    def start_saga(
        self,
        kind: str,
        inputs: Mapping[str, Any],
        *,
        steps: Iterable[str] | None = None,
        saga_id: uuid.UUID | None = None,
        deployment_id: str | None = None,
        triggered_by: str = "manual",
        options: Mapping[str, Any] | None = None,
        admission: Admission = Admission.REFUSE,
    ) -> SagaRun:
        """Record the saga and launch its flow run. Starting the same saga id twice is harmless.

        A destructive saga over the caps is refused (DestructiveCapError, nothing written) unless
        ``admission`` is ``Admission.WAIT``: then it is recorded waiting and its flow run waits."""
        if self._launch is None:
            raise InputError("this Provisioning has no launcher: use create_saga, or build it with one")
        saga = self.create_saga(
            kind,
            inputs,
            steps=steps,
            saga_id=saga_id,
            deployment_id=deployment_id,
            triggered_by=triggered_by,
            options=options,
            admission=admission,
        )
        self._launch(saga)
        return self.ledger.get_saga(saga.id)

    def snapshot_droplet(
        self,
        droplet_id: int,
        *,
        label: str | None = None,
        triggered_by: str = "manual",
        saga_id: uuid.UUID | None = None,
    ) -> SagaRun:
        inputs: dict[str, Any] = {"droplet_id": droplet_id}
        if label is not None:
            inputs["label"] = label
        return self.start_saga("snapshot", inputs, triggered_by=triggered_by, saga_id=saga_id)

    def find_saga_id(self, value: uuid.UUID | str) -> uuid.UUID:
        """The saga a person means: its full id, or a unique start of it of at least 8 hex digits
        (``332fa17d``, ``332fa17d-31d3``), looked up in the ledger.

        A start that several sagas share is refused (InputError, naming them); one that no saga
        has is SagaNotFoundError. A full id is returned as it is, whether or not it exists.
        """
        given = saga_id_or_start(value)
        if isinstance(given, uuid.UUID):
            return given
        found = self.ledger.find_saga_ids_by_prefix(given, limit=_MOST_SHOWN + 1)
        if not found:
            raise SagaNotFoundError(f"no saga id starts with {value}: check the id with `sagas list`")
        if len(found) > 1:
            many = f"more than {_MOST_SHOWN}" if len(found) > _MOST_SHOWN else str(len(found))
            shown = ", ".join(str(i) for i in found[:_MOST_SHOWN])
            raise InputError(f"{value} starts {many} saga ids ({shown}): give more of the id")
        return found[0]

    def get_saga(self, saga_id: uuid.UUID | str) -> SagaRun:
        return self.ledger.get_saga(parse_saga_id(saga_id))

    def list_sagas(
        self,
        *,
        status: SagaStatus | str | None = None,
        kind: str | None = None,
        deployment_id: str | None = None,
        limit: int | None = 50,
    ) -> list[SagaRun]:
        if status is not None and not isinstance(status, SagaStatus):
            try:
                status = SagaStatus(status)
            except ValueError:
                raise InputError(
                    f"unknown status {status!r}: one of {', '.join(s.value for s in SagaStatus)}"
                ) from None
        if kind is not None:
            self.catalog.kind(kind)
        if deployment_id is not None:
            try:
                _DEPLOYMENT_ID.validate_python(deployment_id)
            except ValidationError as exc:
                raise InputError(f"bad deployment id: {exc.errors()[0]['msg']}") from None
        if limit is not None and not 1 <= limit <= 10_000:
            raise InputError("limit must be between 1 and 10000")
        return self.ledger.list_sagas(status=status, kind=kind, deployment_id=deployment_id, limit=limit)

    def list_step_results(self, saga_id: uuid.UUID | str) -> list[StepResult]:
        saga = self.get_saga(saga_id)
        return self.ledger.list_step_results(saga.id)

    def cancel_saga(self, saga_id: uuid.UUID | str) -> SagaRun:
        """Ask the saga to stop; its runner rolls it back at the next safe point."""
        return self.ledger.request_cancel(parse_saga_id(saga_id))
