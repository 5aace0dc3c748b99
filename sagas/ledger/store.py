"""The Postgres ledger: the single source of truth about every saga and every step.

Storage words stay here (rows, upserts, locks); callers speak domain words
(``record_step_started``). Every write a runner makes is *fenced*: it runs in one transaction that
first renews the runner's lease, ``WHERE lease_owner = me AND lease_epoch = my epoch AND the lease
has not expired``. A runner whose lease was taken over gets ``LeaseLostError`` and writes nothing,
which is what makes two runners on one saga impossible rather than merely unlikely. No
transaction here is ever held open across a provider call.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from sagas.errors import (
    DefinitionMismatchError,
    IdempotencyConflictError,
    InputError,
    LeaseLostError,
    LedgerError,
    ResourceBusyError,
    SagaBusyError,
    SagaNotFoundError,
)
from sagas.ledger.database import translate_db_errors
from sagas.ledger.tables import operator_actions, saga_resource_locks, saga_runs, saga_step_results
from sagas.models import (
    Lease,
    NewSaga,
    OperatorAction,
    RecordedStep,
    SagaRun,
    SagaStatus,
    StepResult,
    StepStatus,
)

_RECOVERABLE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- reading -----------------------------------------------------------------------------

    def get_saga(self, saga_id: uuid.UUID) -> SagaRun:
        with translate_db_errors("read a saga"), self._engine.connect() as conn:
            row = conn.execute(select(saga_runs).where(saga_runs.c.id == saga_id)).one_or_none()
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
        return _saga(row)

    def find_saga_by_flow_run(self, flow_run_id: uuid.UUID) -> SagaRun | None:
        query = select(saga_runs).where(saga_runs.c.flow_run_id == flow_run_id)
        with translate_db_errors("find a flow run's saga"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _saga(row)

    def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        kind: str | None = None,
        deployment_id: str | None = None,
        limit: int | None = 50,
    ) -> list[SagaRun]:
        query = select(saga_runs).order_by(saga_runs.c.created_at.desc(), saga_runs.c.id.desc())
        if status is not None:
            query = query.where(saga_runs.c.status == status.value)
        if kind is not None:
            query = query.where(saga_runs.c.kind == kind)
        if deployment_id is not None:
            query = query.where(saga_runs.c.deployment_id == deployment_id)
        if limit is not None:
            query = query.limit(limit)
        with translate_db_errors("list sagas"), self._engine.connect() as conn:
            return [_saga(row) for row in conn.execute(query)]

    def list_step_results(self, saga_id: uuid.UUID) -> list[StepResult]:
        query = (
            select(saga_step_results)
            .where(saga_step_results.c.saga_id == saga_id)
            .order_by(saga_step_results.c.step_idx)
        )
        with translate_db_errors("list step results"), self._engine.connect() as conn:
            return [_step(row) for row in conn.execute(query)]

    def is_cancel_requested(self, saga_id: uuid.UUID) -> bool:
        with translate_db_errors("read a cancel request"), self._engine.connect() as conn:
            value = conn.execute(
                select(saga_runs.c.cancel_requested).where(saga_runs.c.id == saga_id)
            ).scalar_one_or_none()
        return bool(value)

    def list_recoverable(self, *, pending_grace_seconds: float, limit: int = 100) -> list[uuid.UUID]:
        """Unfinished sagas that no live runner holds: what the recovery sweep picks up.

        A ``pending`` saga is only taken once it is older than the grace period: until then its
        own flow run may simply be queued at a worker.
        """
        grace = func.make_interval(0, 0, 0, 0, 0, 0, pending_grace_seconds)
        unheld = (saga_runs.c.lease_expires_at.is_(None)) | (saga_runs.c.lease_expires_at < func.now())
        started_or_stale = (saga_runs.c.status != SagaStatus.PENDING.value) | (
            saga_runs.c.created_at < func.now() - grace
        )
        query = (
            select(saga_runs.c.id)
            .where(saga_runs.c.status.in_([s.value for s in _RECOVERABLE]))
            .where(unheld)
            .where(started_or_stale)
            .order_by(saga_runs.c.created_at)
            .limit(limit)
        )
        with translate_db_errors("list recoverable sagas"), self._engine.connect() as conn:
            return list(conn.execute(query).scalars())

    # -- writes outside a run ----------------------------------------------------------------

    def create_saga(self, new: NewSaga) -> tuple[SagaRun, bool]:
        """Insert the saga (and its resource lock), or return the existing one with that id.

        Returns ``(saga, created)``. Reusing an id for a *different* saga is an InputError; a
        resource held by another unfinished saga is a ResourceBusyError. Either way nothing is
        written: the saga row and its lock go in one transaction.
        """
        statement = (
            pg_insert(saga_runs)
            .values(
                id=new.id,
                kind=new.kind,
                step_names=list(new.step_names),
                definition_version=new.definition_version,
                inputs=new.inputs,
                deployment_id=new.deployment_id,
                resource=new.resource,
                triggered_by=new.triggered_by,
            )
            .on_conflict_do_nothing(index_elements=[saga_runs.c.id])
            .returning(saga_runs)
        )
        with translate_db_errors("record a new saga"), self._engine.begin() as conn:
            row = conn.execute(statement).one_or_none()
            if row is not None and new.resource is not None:
                locked = conn.execute(
                    pg_insert(saga_resource_locks)
                    .values(resource=new.resource, saga_id=new.id)
                    .on_conflict_do_nothing(index_elements=[saga_resource_locks.c.resource])
                    .returning(saga_resource_locks.c.saga_id)
                ).one_or_none()
                if locked is None:
                    holder = conn.execute(
                        select(saga_resource_locks.c.saga_id).where(
                            saga_resource_locks.c.resource == new.resource
                        )
                    ).scalar_one()
                    raise ResourceBusyError(new.resource, str(holder))
        if row is not None:
            return _saga(row), True
        existing = self.get_saga(new.id)
        if (existing.kind, existing.step_names, existing.inputs) != (new.kind, new.step_names, new.inputs):
            raise InputError(
                f"saga id {new.id} is already used by a {existing.kind} saga with other inputs:"
                " use a new id, or omit it"
            )
        return existing, False

    def resource_holder(self, resource: str) -> uuid.UUID | None:
        query = select(saga_resource_locks.c.saga_id).where(saga_resource_locks.c.resource == resource)
        with translate_db_errors("read a resource lock"), self._engine.connect() as conn:
            holder: uuid.UUID | None = conn.execute(query).scalar_one_or_none()
        return holder

    def request_cancel(self, saga_id: uuid.UUID) -> SagaRun:
        statement = (
            update(saga_runs)
            .where(saga_runs.c.id == saga_id)
            .values(cancel_requested=True, updated_at=func.now())
            .returning(saga_runs)
        )
        with translate_db_errors("record a cancel request"), self._engine.begin() as conn:
            row = conn.execute(statement).one_or_none()
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
        return _saga(row)

    def attach_flow_run(self, saga_id: uuid.UUID, flow_run_id: uuid.UUID) -> None:
        statement = (
            update(saga_runs)
            .where(saga_runs.c.id == saga_id)
            .where(saga_runs.c.flow_run_id.is_(None))
            .values(flow_run_id=flow_run_id, updated_at=func.now())
        )
        with translate_db_errors("link a saga to its flow run"), self._engine.begin() as conn:
            conn.execute(statement)

    # -- the lease ---------------------------------------------------------------------------

    def claim(self, saga_id: uuid.UUID, lease_seconds: float) -> Lease:
        """Take the saga for this runner, or raise SagaBusyError (writing nothing)."""
        owner = uuid.uuid4()
        statement = (
            update(saga_runs)
            .where(saga_runs.c.id == saga_id)
            .where((saga_runs.c.lease_owner.is_(None)) | (saga_runs.c.lease_expires_at <= func.now()))
            .values(
                lease_owner=owner,
                lease_epoch=saga_runs.c.lease_epoch + 1,
                lease_expires_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, lease_seconds),
            )
            .returning(saga_runs.c.lease_epoch)
        )
        with translate_db_errors("claim a saga"), self._engine.begin() as conn:
            epoch = conn.execute(statement).scalar_one_or_none()
            if epoch is None:
                remaining = conn.execute(
                    select(func.extract("epoch", saga_runs.c.lease_expires_at - func.now())).where(
                        saga_runs.c.id == saga_id
                    )
                ).one_or_none()
        if epoch is None:
            if remaining is None:
                raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
            seconds = float(remaining[0]) if remaining[0] is not None else None
            raise SagaBusyError(str(saga_id), seconds)
        return Lease(saga_id=saga_id, owner=owner, epoch=int(epoch), seconds=lease_seconds)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; False when it was lost (the caller must stop)."""
        try:
            with self._fenced(lease, "renew a lease"):
                return True
        except LeaseLostError:
            return False

    def release(self, lease: Lease) -> None:
        statement = (
            update(saga_runs)
            .where(saga_runs.c.id == lease.saga_id)
            .where(saga_runs.c.lease_owner == lease.owner)
            .where(saga_runs.c.lease_epoch == lease.epoch)
            .values(lease_owner=None, lease_expires_at=None)
        )
        with translate_db_errors("release a lease"), self._engine.begin() as conn:
            conn.execute(statement)

    @contextmanager
    def _fenced(self, lease: Lease, doing: str) -> Iterator[Connection]:
        """A transaction that proves (and renews) the lease before anything else is written."""
        fence = text(
            "UPDATE saga_runs SET lease_expires_at = now() + make_interval(secs => :secs),"
            " updated_at = now()"
            " WHERE id = :id AND lease_owner = :owner AND lease_epoch = :epoch"
            " AND lease_expires_at > now() RETURNING id"
        )
        with translate_db_errors(doing), self._engine.begin() as conn:
            held = conn.execute(
                fence,
                {"secs": lease.seconds, "id": lease.saga_id, "owner": lease.owner, "epoch": lease.epoch},
            ).one_or_none()
            if held is None:
                raise LeaseLostError(
                    f"this runner lost its lease on saga {lease.saga_id} (expired or taken over);"
                    " it stopped without writing"
                )
            yield conn

    # -- fenced writes by the runner ---------------------------------------------------------

    def set_saga_status(
        self,
        lease: Lease,
        status: SagaStatus,
        *,
        error: str | None = None,
        keep_error: bool = False,
    ) -> None:
        values: dict[str, Any] = {"status": status.value}
        if not keep_error:
            values["error"] = error
        if status is SagaStatus.RUNNING:
            values["started_at"] = func.coalesce(saga_runs.c.started_at, func.now())
        values["finished_at"] = func.now() if status.is_terminal or status.needs_operator else None
        with self._fenced(lease, f"mark the saga {status.value}") as conn:
            conn.execute(update(saga_runs).where(saga_runs.c.id == lease.saga_id).values(**values))
            if status in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK):
                # Finished cleanly: the resource is free. A saga that needs an operator keeps it.
                conn.execute(
                    delete(saga_resource_locks).where(saga_resource_locks.c.saga_id == lease.saga_id)
                )

    def record_step_started(self, lease: Lease, idx: int, name: str, idempotency_key: str) -> StepResult:
        statement = (
            pg_insert(saga_step_results)
            .values(
                saga_id=lease.saga_id,
                step_idx=idx,
                step_name=name,
                status=StepStatus.RUNNING.value,
                idempotency_key=idempotency_key,
                attempts=1,
                started_at=func.now(),
            )
            .on_conflict_do_update(
                constraint="saga_step_results_saga_step_key",
                set_={
                    "status": StepStatus.RUNNING.value,
                    "attempts": saga_step_results.c.attempts + 1,
                    "error": None,
                    "updated_at": func.now(),
                },
                where=(saga_step_results.c.step_name == name)
                & (saga_step_results.c.idempotency_key == idempotency_key),
            )
            .returning(saga_step_results)
        )
        conflict = (
            select(saga_step_results.c.saga_id)
            .where(saga_step_results.c.idempotency_key == idempotency_key)
            .where(saga_step_results.c.saga_id != lease.saga_id)
        )
        with self._fenced(lease, f"record step {name} started") as conn:
            other = conn.execute(conflict).scalar_one_or_none()
            if other is not None:
                raise IdempotencyConflictError(
                    f"step {name} would use the name {idempotency_key}, which saga {other} already"
                    " recorded: nothing was done; start the saga again with a new id"
                )
            row = conn.execute(statement).one_or_none()
        if row is None:
            # The row exists under another name or key: the definition changed under us (rule 7).
            raise DefinitionMismatchError(
                f"saga {lease.saga_id} step {idx} was recorded under another name or key than {name}"
            )
        return _step(row)

    def record_step_progress(self, lease: Lease, idx: int, patch: Mapping[str, Any]) -> None:
        """Merge what a step learned mid-way (an action id) into its output, before going on."""
        self._update_step(
            lease,
            idx,
            f"record step {idx} progress",
            output=saga_step_results.c.output.op("||")(_json(patch)),
        )

    def record_step_completed(self, lease: Lease, idx: int, name: str, output: Mapping[str, Any]) -> None:
        with self._fenced(lease, f"record step {name} completed") as conn:
            merged = conn.execute(
                update(saga_step_results)
                .where(saga_step_results.c.saga_id == lease.saga_id)
                .where(saga_step_results.c.step_idx == idx)
                .values(
                    status=StepStatus.COMPLETED.value,
                    output=saga_step_results.c.output.op("||")(_json(output)),
                    error=None,
                    completed_at=func.now(),
                    updated_at=func.now(),
                )
                .returning(saga_step_results.c.output)
            ).scalar_one()
            conn.execute(
                update(saga_runs)
                .where(saga_runs.c.id == lease.saga_id)
                .values(context=saga_runs.c.context.op("||")(func.jsonb_build_object(name, _json(merged))))
            )

    def record_step_failed(self, lease: Lease, idx: int, error: str) -> None:
        self._update_step(
            lease,
            idx,
            f"record step {idx} failed",
            status=StepStatus.FAILED.value,
            error=error,
            failed_at=func.now(),
        )

    def record_step_compensating(self, lease: Lease, idx: int) -> None:
        self._update_step(
            lease,
            idx,
            f"record step {idx} compensating",
            status=StepStatus.COMPENSATING.value,
            compensation_attempts=saga_step_results.c.compensation_attempts + 1,
            compensation_started_at=func.coalesce(saga_step_results.c.compensation_started_at, func.now()),
        )

    def record_step_compensated(
        self, lease: Lease, idx: int, final: StepStatus = StepStatus.COMPENSATED
    ) -> None:
        self._update_step(
            lease,
            idx,
            f"record step {idx} compensated",
            status=final.value,
            compensated_at=func.now(),
        )

    def record_step_compensation_failed(self, lease: Lease, idx: int, error: str) -> None:
        self._update_step(
            lease,
            idx,
            f"record step {idx} compensation failed",
            status=StepStatus.COMPENSATION_FAILED.value,
            error=error,
        )

    def _update_step(self, lease: Lease, idx: int, doing: str, **values: Any) -> None:
        with self._fenced(lease, doing) as conn:
            updated = conn.execute(
                update(saga_step_results)
                .where(saga_step_results.c.saga_id == lease.saga_id)
                .where(saga_step_results.c.step_idx == idx)
                .values(updated_at=func.now(), **values)
            ).rowcount
            if updated != 1:
                raise LedgerError(f"could not {doing}: step {idx} of saga {lease.saga_id} has no ledger row")

    # -- operators (``sagas resolve``, ``sagas orphans``) -------------------------------------

    def resolve_saga(self, lease: Lease, *, by: str, note: str) -> SagaRun:
        """Mark the saga resolved by hand (who, when, why) and free its resource, fenced.

        Refused with InputError, writing nothing, when the saga is already finished: a resolution
        never hides how a saga really ended. The audit row goes in the same transaction.
        """
        finished = [s.value for s in SagaStatus if s.is_terminal]
        with self._fenced(lease, "resolve a saga") as conn:
            before = conn.execute(
                select(saga_runs.c.status, saga_runs.c.error, saga_runs.c.resource).where(
                    saga_runs.c.id == lease.saga_id
                )
            ).one()
            if before.status in finished:
                raise InputError(
                    f"saga {lease.saga_id} is already {before.status}: there is nothing to resolve"
                )
            row = conn.execute(
                update(saga_runs)
                .where(saga_runs.c.id == lease.saga_id)
                .values(
                    status=SagaStatus.RESOLVED.value,
                    resolved_by=by,
                    resolved_at=func.now(),
                    resolution_note=note,
                    finished_at=func.now(),
                    updated_at=func.now(),
                )
                .returning(saga_runs)
            ).one()
            released = conn.execute(
                delete(saga_resource_locks)
                .where(saga_resource_locks.c.saga_id == lease.saga_id)
                .returning(saga_resource_locks.c.resource)
            ).scalars()
            detail = {
                "note": note,
                "previous_status": before.status,
                "previous_error": before.error,
                "released": sorted(released),
            }
            conn.execute(
                insert(operator_actions).values(
                    action="resolve", target=f"saga:{lease.saga_id}", detail=detail, performed_by=by
                )
            )
        return _saga(row)

    def get_sagas(self, saga_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, SagaRun]:
        """The sagas among ``saga_ids`` that exist, by id (unknown ids are simply absent)."""
        if not saga_ids:
            return {}
        query = select(saga_runs).where(saga_runs.c.id.in_(list(saga_ids)))
        with translate_db_errors("read sagas"), self._engine.connect() as conn:
            return {saga.id: saga for saga in (_saga(row) for row in conn.execute(query))}

    def find_recorded_steps(
        self,
        *,
        keys: Collection[str] = (),
        output_values: Mapping[str, Collection[str]] | None = None,
        saga_ids: Collection[uuid.UUID] = (),
    ) -> list[RecordedStep]:
        """Steps that recorded one of ``keys`` as their idempotency key, or one of the values under
        an output field (``{"snapshot_id": [...]}``, compared as text), or that belong to one of
        ``saga_ids``; each with its saga's status. Which saga, if any, owns a provider resource."""
        matches = []
        if keys:
            matches.append(saga_step_results.c.idempotency_key.in_(list(keys)))
        for field, values in (output_values or {}).items():
            if values:
                matches.append(saga_step_results.c.output[field].astext.in_([str(v) for v in values]))
        if saga_ids:
            matches.append(saga_step_results.c.saga_id.in_(list(saga_ids)))
        if not matches:
            return []
        query = (
            select(saga_step_results, saga_runs.c.status.label("saga_status"))
            .join(saga_runs, saga_runs.c.id == saga_step_results.c.saga_id)
            .where(or_(*matches))
            .order_by(saga_step_results.c.saga_id, saga_step_results.c.step_idx)
        )
        with translate_db_errors("find recorded steps"), self._engine.connect() as conn:
            rows = list(conn.execute(query))
        found = []
        for row in rows:
            data = dict(row._mapping)
            status = SagaStatus(data.pop("saga_status"))
            found.append(RecordedStep(step=StepResult.model_validate(data), saga_status=status))
        return found

    def record_operator_action(
        self, action: str, target: str, detail: Mapping[str, Any], performed_by: str
    ) -> OperatorAction:
        """Write down what an operator is about to do (or did), before and after the outside effect."""
        statement = (
            insert(operator_actions)
            .values(action=action, target=target, detail=_json(detail), performed_by=performed_by)
            .returning(operator_actions)
        )
        with translate_db_errors("record an operator action"), self._engine.begin() as conn:
            row = conn.execute(statement).one()
        return OperatorAction.model_validate(dict(row._mapping))

    def update_operator_action(self, action_id: int, patch: Mapping[str, Any]) -> OperatorAction:
        """Merge the outcome of an operator action into its detail."""
        statement = (
            update(operator_actions)
            .where(operator_actions.c.id == action_id)
            .values(detail=operator_actions.c.detail.op("||")(_json(patch)))
            .returning(operator_actions)
        )
        with translate_db_errors("record an operator action's outcome"), self._engine.begin() as conn:
            row = conn.execute(statement).one_or_none()
        if row is None:
            raise LedgerError(f"operator action {action_id} has no ledger row")
        return OperatorAction.model_validate(dict(row._mapping))

    def list_operator_actions(self, *, target: str | None = None, limit: int = 100) -> list[OperatorAction]:
        """Newest first."""
        query = (
            select(operator_actions)
            .order_by(operator_actions.c.performed_at.desc(), operator_actions.c.id.desc())
            .limit(limit)
        )
        if target is not None:
            query = query.where(operator_actions.c.target == target)
        with translate_db_errors("list operator actions"), self._engine.connect() as conn:
            return [OperatorAction.model_validate(dict(row._mapping)) for row in conn.execute(query)]


def _json(value: Mapping[str, Any]) -> Any:
    return literal(dict(value), JSONB)


def _saga(row: Row[Any]) -> SagaRun:
    data = dict(row._mapping)
    data["step_names"] = tuple(data["step_names"])
    return SagaRun.model_validate(data)


def _step(row: Row[Any]) -> StepResult:
    return StepResult.model_validate(dict(row._mapping))
