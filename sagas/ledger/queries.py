"""Reading the ledger, and the writes made outside any runner's lease: recording a new saga (with its
resource lock), a cancel request, the link to a flow run.

Each write here is one short transaction; none needs the lease, because none changes what a runner
decided: a cancel is a request the runner reads at its next safe point.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from sagas.errors import (
    DestructiveCapError,
    InputError,
    ResourceBusyError,
    SagaNotFoundError,
)
from sagas.ledger.admission import lock_places, why_full
from sagas.ledger.database import READ_RECOVERY_SECONDS, translate_db_errors, while_ledger_recovers
from sagas.ledger.rows import saga_from_row, step_from_row
from sagas.ledger.tables import saga_resource_locks, saga_runs, saga_step_results
from sagas.models import (
    Admission,
    DestructiveCaps,
    NewSaga,
    RecordedStep,
    SagaRun,
    SagaStatus,
    StepResult,
)

T = TypeVar("T")
_RECOVERABLE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def ids_by_prefix_query(prefix: str, limit: int) -> Select[Any]:
    """``find_saga_ids_by_prefix``'s query (a test proves Postgres walks the primary key for it)."""
    if not (0 < len(prefix) <= 32 and all(c in "0123456789abcdef" for c in prefix)):
        raise InputError("a saga id prefix is 1 to 32 lowercase hex digits")
    lowest, highest = uuid.UUID(prefix.ljust(32, "0")), uuid.UUID(prefix.ljust(32, "f"))
    return (
        select(saga_runs.c.id)
        .where(saga_runs.c.id >= lowest, saga_runs.c.id <= highest)
        .order_by(saga_runs.c.id)
        .limit(limit)
    )


class SagaRecords:
    _engine: Engine

    def _read(self, doing: str, query: Callable[[Connection], T]) -> T:
        """Run a read, waiting a few seconds for the ledger if it is briefly unreachable."""

        def once() -> T:
            with translate_db_errors(doing), self._engine.connect() as conn:
                return query(conn)

        return while_ledger_recovers(once, deadline=READ_RECOVERY_SECONDS)

    # -- reading -----------------------------------------------------------------------------

    def get_saga(self, saga_id: uuid.UUID) -> SagaRun:
        row = self._read(
            "read a saga",
            lambda c: c.execute(select(saga_runs).where(saga_runs.c.id == saga_id)).one_or_none(),
        )
        if row is None:
            raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
        return saga_from_row(row)

    def find_saga_ids_by_prefix(self, prefix: str, *, limit: int = 10) -> list[uuid.UUID]:
        """Ids of the sagas whose id, as 32 hex digits, starts with ``prefix``: at most ``limit``,
        in id order.

        A range scan on the primary key: every such id lies between the prefix padded with 0s and
        the prefix padded with fs, and Postgres orders uuids by their bytes, as their hex reads.
        """
        query = ids_by_prefix_query(prefix, limit)
        return self._read("find sagas by id prefix", lambda c: list(c.execute(query).scalars()))

    def find_saga_by_flow_run(self, flow_run_id: uuid.UUID) -> SagaRun | None:
        """The newest saga this flow run drives (a Retry after a rollback adds a newer one)."""
        query = (
            select(saga_runs)
            .where(saga_runs.c.flow_run_id == flow_run_id)
            .order_by(saga_runs.c.created_at.desc())
            .limit(1)
        )
        row = self._read("find a flow run's saga", lambda c: c.execute(query).first())
        return None if row is None else saga_from_row(row)

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
        return self._read("list sagas", lambda c: [saga_from_row(row) for row in c.execute(query)])

    def list_step_results(self, saga_id: uuid.UUID) -> list[StepResult]:
        query = (
            select(saga_step_results)
            .where(saga_step_results.c.saga_id == saga_id)
            .order_by(saga_step_results.c.step_idx)
        )
        return self._read("list step results", lambda c: [step_from_row(row) for row in c.execute(query)])

    def is_cancel_requested(self, saga_id: uuid.UUID) -> bool:
        query = select(saga_runs.c.cancel_requested).where(saga_runs.c.id == saga_id)
        return bool(self._read("read a cancel request", lambda c: c.execute(query).scalar_one_or_none()))

    def list_recoverable(self, *, pending_grace_seconds: float, limit: int = 100) -> list[uuid.UUID]:
        """Unfinished sagas that no live runner holds: what the recovery sweep picks up.

        A ``pending`` saga is only taken once it is older than the grace period: until then its
        own flow run may simply be queued at a worker. A saga ``awaiting_approval`` is taken once
        it was decided, cancelled, or its deadline passed (then it rolls back).
        """
        grace = func.make_interval(0, 0, 0, 0, 0, 0, pending_grace_seconds)
        unheld = (saga_runs.c.lease_expires_at.is_(None)) | (saga_runs.c.lease_expires_at < func.now())
        # A saga waiting for a place under the destructive caps is its waiter's while the waiter
        # keeps asking (each try stamps ``waiting_checked_at``).
        started_or_stale = (saga_runs.c.status != SagaStatus.PENDING.value) | (
            func.coalesce(saga_runs.c.waiting_checked_at, saga_runs.c.created_at) < func.now() - grace
        )
        # A saga awaiting a person is left alone until someone decided, cancelled, or its deadline passed.
        waiting = saga_runs.c.status == SagaStatus.AWAITING_APPROVAL.value
        answered = (
            saga_runs.c.approval_decision.isnot(None)
            | saga_runs.c.cancel_requested
            | (saga_runs.c.approval_deadline_at < func.now())
        )
        query = (
            select(saga_runs.c.id)
            .where(saga_runs.c.status.in_([s.value for s in _RECOVERABLE]) | (waiting & answered))
            .where(unheld)
            .where(started_or_stale)
            .where(saga_runs.c.queue.is_(None))  # a queued saga is its queue's workers' to run
            .order_by(saga_runs.c.created_at)
            .limit(limit)
        )
        with translate_db_errors("list recoverable sagas"), self._engine.connect() as conn:
            return list(conn.execute(query).scalars())

    # -- queues ------------------------------------------------------------------------------

    def list_queued(
        self,
        queue: str,
        *,
        limit: int,
        exclude: Collection[uuid.UUID] = (),
        waiting_retry_seconds: float = 2.0,
    ) -> list[uuid.UUID]:
        """Sagas of ``queue`` a worker may run now, oldest first: pending ones, ones whose runner
        died (lease expired), and ones awaiting approval that were answered (decided, cancelled,
        deadline passed), as the recovery sweep would take them. One waiting for a place under the
        destructive caps is offered again ``waiting_retry_seconds`` after it was last tried.
        ``exclude``: those this worker already holds in hand."""
        unheld = (saga_runs.c.lease_expires_at.is_(None)) | (saga_runs.c.lease_expires_at < func.now())
        answered = (
            saga_runs.c.approval_decision.isnot(None)
            | saga_runs.c.cancel_requested
            | (saga_runs.c.approval_deadline_at < func.now())
        )
        retry = func.make_interval(0, 0, 0, 0, 0, 0, waiting_retry_seconds)
        query = (
            select(saga_runs.c.id)
            .where(saga_runs.c.queue == queue)
            .where(saga_runs.c.status.in_(["pending", "running", "compensating", "awaiting_approval"]))
            .where((saga_runs.c.status != SagaStatus.AWAITING_APPROVAL.value) | answered)
            .where(unheld)
            .where(
                saga_runs.c.waiting_reason.is_(None) | (saga_runs.c.waiting_checked_at < func.now() - retry)
            )
            .order_by(saga_runs.c.created_at)
            .limit(limit)
        )
        if exclude:
            query = query.where(saga_runs.c.id.not_in(list(exclude)))
        return self._read("list a queue's sagas", lambda c: list(c.execute(query).scalars()))

    def count_queued_by(self, flow_run_id: uuid.UUID) -> dict[str, int]:
        """How many of the sagas ``flow_run_id`` queued are in each status (``pending``: not started
        yet, waiting for a worker or for a place under the destructive caps)."""
        query = (
            select(saga_runs.c.status, func.count())
            .where(saga_runs.c.queued_by == flow_run_id)
            .group_by(saga_runs.c.status)
        )
        rows = self._read("count a flow run's queued sagas", lambda c: list(c.execute(query)))
        return {str(status): int(n) for status, n in rows}

    def list_queued_by(self, flow_run_id: uuid.UUID) -> list[SagaRun]:
        """Every saga ``flow_run_id`` queued, oldest first."""
        query = (
            select(saga_runs)
            .where(saga_runs.c.queued_by == flow_run_id)
            .order_by(saga_runs.c.created_at, saga_runs.c.id)
        )
        return self._read(
            "list a flow run's queued sagas", lambda c: [saga_from_row(r) for r in c.execute(query)]
        )

    # -- writes outside a run ----------------------------------------------------------------

    def create_saga(
        self,
        new: NewSaga,
        *,
        admission: Admission | None = None,
        caps: DestructiveCaps | None = None,
    ) -> tuple[SagaRun, bool]:
        """Insert the saga (and its resource lock), or return the existing one with that id.

        Returns ``(saga, created)``. Reusing an id for a *different* saga is an InputError; a
        resource held by another unfinished saga is a ResourceBusyError. Either way nothing is
        written: the saga row and its lock go in one transaction.

        A new destructive saga with ``admission`` and ``caps`` takes its place under the caps in the
        same transaction (``sagas.ledger.admission``): when they are full it is refused with
        DestructiveCapError and nothing written (``Admission.REFUSE``), or recorded waiting, with
        the reason (``Admission.WAIT``). Without ``admission`` its runner admits it before its
        first step.
        """
        values: dict[str, object] = dict(
            id=new.id,
            kind=new.kind,
            step_names=list(new.step_names),
            definition_version=new.definition_version,
            inputs=new.inputs,
            deployment_id=new.deployment_id,
            resource=new.resource,
            triggered_by=new.triggered_by,
            flow_run_id=new.flow_run_id,
            options=new.options,
            retry_of=new.retry_of,
            destructive=new.destructive,
            queue=new.queue,
            queued_by=new.queued_by,
        )
        with translate_db_errors("record a new saga"), self._engine.begin() as conn:
            if new.destructive and admission is not None and caps is not None:
                lock_places(conn)
                known = conn.execute(select(saga_runs.c.id).where(saga_runs.c.id == new.id)).first()
                reason = None if known is not None else why_full(conn, caps, new.deployment_id)
                if known is None and reason is None:
                    values["admitted_at"] = func.now()
                elif reason is not None and admission is Admission.REFUSE:
                    raise DestructiveCapError(reason)
                elif reason is not None:
                    values.update(
                        waiting_reason=reason, waiting_since=func.now(), waiting_checked_at=func.now()
                    )
            statement = (
                pg_insert(saga_runs)
                .values(**values)
                .on_conflict_do_nothing(index_elements=[saga_runs.c.id])
                .returning(saga_runs)
            )
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
            return saga_from_row(row), True
        existing = self.get_saga(new.id)
        # Runner options (timeouts, approval) are not part of what a saga is: the recorded ones stay.
        if (existing.kind, existing.step_names, existing.inputs) != (new.kind, new.step_names, new.inputs):
            raise InputError(
                f"saga id {new.id} is already used by a {existing.kind} saga with other inputs:"
                " use a new id, or omit it"
            )
        if existing.flow_run_id is None and new.flow_run_id is not None:
            self.attach_flow_run(existing.id, new.flow_run_id)
            existing = existing.model_copy(update={"flow_run_id": new.flow_run_id})
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
        return saga_from_row(row)

    def attach_flow_run(self, saga_id: uuid.UUID, flow_run_id: uuid.UUID) -> None:
        statement = (
            update(saga_runs)
            .where(saga_runs.c.id == saga_id)
            .where(saga_runs.c.flow_run_id.is_(None))
            .values(flow_run_id=flow_run_id, updated_at=func.now())
        )
        with translate_db_errors("link a saga to its flow run"), self._engine.begin() as conn:
            conn.execute(statement)

    def get_sagas(self, saga_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, SagaRun]:
        """The sagas among ``saga_ids`` that exist, by id (unknown ids are simply absent)."""
        if not saga_ids:
            return {}
        query = select(saga_runs).where(saga_runs.c.id.in_(list(saga_ids)))
        with translate_db_errors("read sagas"), self._engine.connect() as conn:
            return {saga.id: saga for saga in (saga_from_row(row) for row in conn.execute(query))}

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
