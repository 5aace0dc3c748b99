"""The lease and the runner's fenced writes: the hot path of the ledger.

Every write a runner makes is *fenced*: it is one statement whose ``fence`` CTE first renews the
runner's lease, ``WHERE lease_owner = me AND lease_epoch = my epoch AND the lease has not
expired``, and whose writes all select from that CTE. A runner whose lease was taken over gets
``LeaseLostError`` and writes nothing, which is what makes two runners on one saga impossible
rather than merely unlikely. Being one statement each, these run in autocommit on the driver
connection (one round trip, one commit). No transaction is ever held across a provider call.

Why one file: every statement here is built on the same ``fence`` CTE and its lease parameters;
keeping the whole set together is what lets a reader check that no runner write escapes the fence.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import (
    Connection,
    Engine,
    select,
)

from sagas.errors import (
    DefinitionMismatchError,
    IdempotencyConflictError,
    LeaseLostError,
    LedgerError,
    SagaBusyError,
    SagaNotFoundError,
)
from sagas.ledger.database import autocommit_cursor, translate_db_errors, while_ledger_recovers
from sagas.ledger.rows import saga_from_row, step_from_row
from sagas.ledger.tables import saga_step_results
from sagas.models import (
    Lease,
    NextStep,
    SagaRun,
    SagaStatus,
    StepCompletion,
    StepResult,
    StepStatus,
)


class FencedWrites:
    _engine: Engine

    # -- the lease ---------------------------------------------------------------------------

    def claim(self, saga_id: uuid.UUID, lease_seconds: float) -> Lease:
        """Take the saga for this runner, or raise SagaBusyError (writing nothing)."""
        return self.claim_saga(saga_id, lease_seconds)[0]

    def claim_saga(self, saga_id: uuid.UUID, lease_seconds: float) -> tuple[Lease, SagaRun]:
        """Take the saga for this runner and read it in the same statement, or raise SagaBusyError."""
        owner = uuid.uuid4()

        def claim() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            with translate_db_errors("claim a saga"), autocommit_cursor(self._engine) as cursor:
                row = cursor.execute(
                    _CLAIM, {"saga_id": saga_id, "owner": owner, "secs": lease_seconds}
                ).fetchone()
                held = (
                    None if row is not None else cursor.execute(_LEASE_LEFT, {"saga_id": saga_id}).fetchone()
                )
            return row, held

        row, held = while_ledger_recovers(claim, deadline=lease_seconds / 3)
        if row is None:
            if held is None:
                raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
            seconds = float(held["seconds_left"]) if held["seconds_left"] is not None else None
            raise SagaBusyError(str(saga_id), seconds)
        lease = Lease(saga_id=saga_id, owner=owner, epoch=int(row["lease_epoch"]), seconds=lease_seconds)
        return lease, saga_from_row(row)

    def renew(self, lease: Lease) -> bool:
        """Extend the lease; False when it was lost (the caller must stop)."""
        try:
            self._fenced_write(lease, "renew a lease", _FENCE_ONLY)
        except LeaseLostError:
            return False
        return True

    def release(self, lease: Lease) -> SagaRun | None:
        """Give the saga up; returns it as released, or None when the lease was no longer ours."""
        with translate_db_errors("release a lease"), autocommit_cursor(self._engine) as cursor:
            row = cursor.execute(_RELEASE, _lease_params(lease)).fetchone()
        return None if row is None else saga_from_row(row)

    @contextmanager
    def _fenced(self, lease: Lease, doing: str) -> Iterator[Connection]:
        """A transaction that proves (and renews) the lease before anything else is written.

        For writes of several statements (an operator's resolution); the runner's own writes are
        one statement each, see ``_fenced_write``.
        """
        with translate_db_errors(doing), self._engine.begin() as conn:
            held = conn.exec_driver_sql(_FENCE_ONLY, _lease_params(lease)).one_or_none()
            if held is None:
                raise _lease_lost(lease)
            yield conn

    def _fenced_write(self, lease: Lease, doing: str, statement: str, **params: Any) -> dict[str, Any]:
        """One statement that renews the lease and writes only if the lease is still ours.

        The statement's ``fence`` CTE updates the saga row ``WHERE`` the lease is ours and returns
        the saga's ``cancel_requested``; every write in it selects from ``fence``, so a lost lease
        writes nothing. Being one statement, it runs in autocommit on the driver connection: one
        round trip, one commit, and none of the per-call cost of a SQLAlchemy transaction (these
        writes are the ledger's hot path, a few per step). Returns the statement's row; raises
        LeaseLostError when there is none.
        """

        def write() -> dict[str, Any] | None:
            with translate_db_errors(doing), autocommit_cursor(self._engine) as cursor:
                return cursor.execute(statement, {**_lease_params(lease), **params}).fetchone()

        # A connection lost mid-write (a reset, a failover, a restart) is tried again while the lease
        # can still be ours; if it committed before the answer was lost, the same write again is
        # harmless (each statement is fenced and converges). Lasting longer, LedgerUnavailableError
        # stops the runner and leaves the saga as it is, for a resume: never a rollback.
        row = while_ledger_recovers(write, deadline=lease.seconds / 3)
        if row is None:
            raise _lease_lost(lease)
        return row

    # -- fenced writes by the runner ---------------------------------------------------------
    # Each returns what it needs to and, where the runner asks "was a cancel requested?" at the
    # next step boundary, the saga's ``cancel_requested`` as the same statement read it.

    def set_saga_status(
        self,
        lease: Lease,
        status: SagaStatus,
        *,
        error: str | None = None,
        keep_error: bool = False,
    ) -> bool:
        """Set the saga's status (freeing its resource once it finished cleanly); returns whether
        a cancel is requested."""
        row = self._fenced_write(
            lease,
            f"mark the saga {status.value}",
            _SET_STATUS,
            status=status.value,
            error=error,
            keep_error=keep_error,
            running=status is SagaStatus.RUNNING,
            finished=status.is_terminal or status.needs_operator,
            # Finished cleanly: the resource is free. A saga that needs an operator keeps it.
            release=status in (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK),
        )
        return bool(row["fence_cancel_requested"])

    def await_approval(self, lease: Lease, deadline_seconds: float) -> bool:
        """Stop the saga ``awaiting_approval`` (it keeps its resource); the deadline is set once, the
        first time it stops. Returns whether a cancel is requested."""
        row = self._fenced_write(
            lease, "stop the saga for approval", _AWAIT_APPROVAL, deadline=deadline_seconds
        )
        return bool(row["fence_cancel_requested"])

    def record_step_started(self, lease: Lease, idx: int, name: str, idempotency_key: str) -> StepResult:
        try:
            row = self._fenced_write(
                lease, f"record step {name} started", _STEP_STARTED, idx=idx, name=name, key=idempotency_key
            )
        except LedgerError as exc:
            if not _is_idempotency_conflict(exc):
                raise
            other = self._idempotency_key_holder(idempotency_key)
            raise IdempotencyConflictError(
                f"step {name} would use the name {idempotency_key}, which saga {other} already"
                " recorded: nothing was done; start the saga again with a new id"
            ) from exc
        if row["id"] is None:
            # The row exists under another name or key: the definition changed under us (rule 7).
            raise DefinitionMismatchError(
                f"saga {lease.saga_id} step {idx} was recorded under another name or key than {name}"
            )
        return step_from_row(row)

    def _idempotency_key_holder(self, key: str) -> uuid.UUID | None:
        query = select(saga_step_results.c.saga_id).where(saga_step_results.c.idempotency_key == key)
        with translate_db_errors("read who holds an idempotency key"), self._engine.connect() as conn:
            holder: uuid.UUID | None = conn.execute(query).scalar_one_or_none()
        return holder

    def record_step_progress(
        self, lease: Lease, idx: int, patch: Mapping[str, Any], *, writing: bool | None = False
    ) -> None:
        """Merge what a step learned mid-way (an action id) into its output, before going on; with
        ``writing`` True, also record that a provider write may be sent from now on (once: the
        first); with None, take that back (the step's first write provably never took effect)."""
        self._update_step(
            lease,
            idx,
            f"record step {idx} progress",
            _STEP_PROGRESS,
            patch=Jsonb(dict(patch)),
            writing=writing is True,
            unwriting=writing is None,
        )

    def record_step_skipped(self, lease: Lease, idx: int, name: str, idempotency_key: str, why: str) -> None:
        """Record a step that has nothing to do for the saga's inputs: ``skipped``, never run."""
        row = self._fenced_write(
            lease,
            f"record step {name} skipped",
            _STEP_SKIPPED,
            idx=idx,
            name=name,
            key=idempotency_key,
            output=Jsonb({"skipped": why}),
        )
        if row["id"] is None:
            raise DefinitionMismatchError(
                f"saga {lease.saga_id} step {idx} was recorded under another name or key than {name}"
            )

    def record_step_completed(
        self,
        lease: Lease,
        idx: int,
        name: str,
        output: Mapping[str, Any],
        *,
        then_start: NextStep | None = None,
        finish: bool = False,
        finish_unless_cancelled: bool = False,
    ) -> StepCompletion:
        """Mark the step completed and merge its output into the step row and the saga's context.

        With ``then_start``, the same statement (one commit) also records the next step started,
        unless ``then_start.unless_cancelled`` and a cancel is requested: the runner's one ledger
        write per step boundary. Returns whether a cancel is requested and the next step's row if
        it was started. When the next step's idempotency key is another saga's, this step is still
        recorded completed and the next is not started (``record_step_started`` then says why).
        With ``finish`` (the last step), the same statement marks the saga completed and frees its
        resource, as ``set_saga_status(COMPLETED)`` would; with ``finish_unless_cancelled`` too, not
        when a cancel is requested (the runner then rolls the saga back).
        """
        doing = f"record step {name} completed"
        params: dict[str, Any] = {
            "idx": idx,
            "name": name,
            "output": Jsonb(dict(output)),
            "start_next": then_start is not None,
            "next_idx": None if then_start is None else then_start.idx,
            "next_name": None if then_start is None else then_start.name,
            "next_key": None if then_start is None else then_start.idempotency_key,
            "unless_cancelled": then_start is not None and then_start.unless_cancelled,
            "finish": finish,
            "finish_unless_cancelled": finish and finish_unless_cancelled,
        }
        try:
            row = self._fenced_write(lease, doing, _STEP_COMPLETED, **params)
        except LedgerError as exc:
            if then_start is None or not _is_idempotency_conflict(exc):
                raise
            row = self._fenced_write(lease, doing, _STEP_COMPLETED, **{**params, "start_next": False})
        if row["completed_rows"] != 1:
            raise LedgerError(f"could not {doing}: step {idx} of saga {lease.saga_id} has no ledger row")
        started = step_from_row(row) if row["id"] is not None else None
        return StepCompletion(cancel_requested=bool(row["fence_cancel_requested"]), next_started=started)

    def record_step_failed(self, lease: Lease, idx: int, error: str) -> None:
        self._update_step(lease, idx, f"record step {idx} failed", _STEP_FAILED, error=error)

    def record_step_compensating(self, lease: Lease, idx: int) -> None:
        self._update_step(lease, idx, f"record step {idx} compensating", _STEP_COMPENSATING)

    def record_step_compensated(
        self, lease: Lease, idx: int, final: StepStatus = StepStatus.COMPENSATED
    ) -> None:
        self._update_step(lease, idx, f"record step {idx} compensated", _STEP_COMPENSATED, status=final.value)

    def record_step_compensation_failed(self, lease: Lease, idx: int, error: str) -> None:
        self._update_step(
            lease, idx, f"record step {idx} compensation failed", _STEP_COMPENSATION_FAILED, error=error
        )

    def _update_step(
        self, lease: Lease, idx: int, doing: str, statement: str, **params: Any
    ) -> dict[str, Any]:
        row = self._fenced_write(lease, doing, statement, idx=idx, **params)
        if row["updated"] != 1:
            raise LedgerError(f"could not {doing}: step {idx} of saga {lease.saga_id} has no ledger row")
        return row


# -- the runner's fenced statements ----------------------------------------------------------------
# ``fence`` renews the lease and proves it in one: it updates the saga row only while this runner
# holds the lease, and every write below selects from it. Each statement is built once (and
# prepared by psycopg after a few runs).

_FENCE_SQL = (
    "UPDATE saga_runs SET lease_expires_at = now() + make_interval(secs => %(lease_secs)s),"
    " updated_at = now(){set}"
    " WHERE id = %(saga_id)s AND lease_owner = %(lease_owner)s AND lease_epoch = %(lease_epoch)s"
    " AND lease_expires_at > now()"
    " RETURNING id, cancel_requested"
)
_IDEMPOTENCY_INDEX = "saga_step_results_idempotency_key_uq"
_CLAIM = (
    "UPDATE saga_runs SET lease_owner = %(owner)s, lease_epoch = lease_epoch + 1,"
    " lease_expires_at = now() + make_interval(secs => %(secs)s)"
    " WHERE id = %(saga_id)s"
    # Our own owner id too: a claim whose commit's answer was lost is simply claimed again.
    " AND (lease_owner IS NULL OR lease_expires_at <= now() OR lease_owner = %(owner)s)"
    " RETURNING *"
)
_LEASE_LEFT = "SELECT extract(epoch FROM lease_expires_at - now()) AS seconds_left FROM saga_runs WHERE id = %(saga_id)s"
_RELEASE = (
    "UPDATE saga_runs SET lease_owner = NULL, lease_expires_at = NULL"
    " WHERE id = %(saga_id)s AND lease_owner = %(lease_owner)s AND lease_epoch = %(lease_epoch)s"
    " RETURNING *"
)


# The step row a statement writes: by the saga's id as a constant as well as through ``fence``
# (the same value; no row when the lease is lost). Joined through ``fence`` alone, the planner may
# scan the whole table for the step and join afterwards, as it did on a young table once the row
# grew a column (migration 0007): a sequential scan per step that grew with the table.
_STEP_ROW = (
    "saga_step_results.saga_id = %(saga_id)s AND saga_step_results.saga_id = fence.id"
    " AND saga_step_results.step_idx = %(idx)s"
)
_LOCK_ROW = "saga_resource_locks.saga_id = %(saga_id)s AND saga_resource_locks.saga_id = fence.id"


def _fence(set_sql: str = "") -> str:
    return _FENCE_SQL.format(set=set_sql)


def _step_update(set_sql: str) -> str:
    """Update one step row (and renew the lease); yields ``updated`` (0 or 1) and the cancel flag."""
    return (
        f"WITH fence AS ({_fence()}),"
        f" step AS (UPDATE saga_step_results SET {set_sql}, updated_at = now() FROM fence"
        f" WHERE {_STEP_ROW}"
        " RETURNING saga_step_results.id)"
        " SELECT fence.cancel_requested AS fence_cancel_requested,"
        " (SELECT count(*) FROM step) AS updated FROM fence"
    )


_FENCE_ONLY = _fence()
_SET_STATUS = (
    "WITH fence AS ("
    + _fence(
        ", status = %(status)s,"
        " error = CASE WHEN %(keep_error)s THEN error ELSE CAST(%(error)s AS text) END,"
        " started_at = CASE WHEN %(running)s THEN coalesce(started_at, now()) ELSE started_at END,"
        " finished_at = CASE WHEN %(finished)s THEN now() ELSE NULL END"
    )
    + "), released AS (DELETE FROM saga_resource_locks USING fence"
    f" WHERE %(release)s AND {_LOCK_ROW} RETURNING 1)"
    " SELECT fence.cancel_requested AS fence_cancel_requested FROM fence"
)
_AWAIT_APPROVAL = (
    "WITH fence AS ("
    + _fence(
        # Waiting for a person holds no place under the destructive caps: it takes one again to go on.
        ", status = 'awaiting_approval', admitted_at = NULL,"
        " approval_requested_at = coalesce(approval_requested_at, now()),"
        " approval_deadline_at = coalesce(approval_deadline_at, now() + make_interval(secs => %(deadline)s))"
    )
    + ") SELECT fence.cancel_requested AS fence_cancel_requested FROM fence"
)
_STEP_STARTED = (
    f"WITH fence AS ({_fence()}),"
    " step AS (INSERT INTO saga_step_results"
    " (saga_id, step_idx, step_name, status, idempotency_key, attempts, started_at)"
    " SELECT fence.id, %(idx)s, %(name)s, 'running', %(key)s, 1, now() FROM fence"
    " ON CONFLICT ON CONSTRAINT saga_step_results_saga_step_key DO UPDATE SET status = 'running',"
    " attempts = saga_step_results.attempts + 1, error = NULL, updated_at = now()"
    " WHERE saga_step_results.step_name = %(name)s AND saga_step_results.idempotency_key = %(key)s"
    " RETURNING saga_step_results.*)"
    " SELECT fence.cancel_requested AS fence_cancel_requested, step.* FROM fence LEFT JOIN step ON true"
)
_STEP_PROGRESS = _step_update(
    "output = output || %(patch)s, write_started_at = CASE WHEN %(writing)s"
    " THEN coalesce(write_started_at, now()) WHEN %(unwriting)s THEN NULL ELSE write_started_at END"
)
_STEP_SKIPPED = (
    f"WITH fence AS ({_fence()}),"
    " step AS (INSERT INTO saga_step_results"
    " (saga_id, step_idx, step_name, status, idempotency_key, output, attempts, started_at, completed_at)"
    " SELECT fence.id, %(idx)s, %(name)s, 'skipped', %(key)s, %(output)s, 0, now(), now() FROM fence"
    " ON CONFLICT ON CONSTRAINT saga_step_results_saga_step_key DO UPDATE SET status = 'skipped',"
    " output = saga_step_results.output || %(output)s, completed_at = now(), updated_at = now()"
    " WHERE saga_step_results.step_name = %(name)s AND saga_step_results.idempotency_key = %(key)s"
    " RETURNING saga_step_results.*)"
    " SELECT fence.cancel_requested AS fence_cancel_requested, step.* FROM fence LEFT JOIN step ON true"
)
# Completing a step: the saga's context gets the step's merged output (both read the step row as it
# was before this statement, so they agree) and, when asked, the next step is recorded started in
# the same commit unless a cancel is requested.
_HAS_STEP_ROW = (
    "EXISTS (SELECT 1 FROM saga_step_results AS f WHERE f.saga_id = %(saga_id)s AND f.step_idx = %(idx)s)"
)
# A last step completes the saga, unless (before any pivot) a cancel arrived while it ran: then the
# runner rolls it back instead, as it would have at a safe point inside the step.
_FINISHING = f"(%(finish)s AND {_HAS_STEP_ROW} AND NOT (%(finish_unless_cancelled)s AND cancel_requested))"
_STEP_COMPLETED = (
    "WITH fence AS ("
    + _fence(
        ", context = context || jsonb_build_object(CAST(%(name)s AS text), coalesce((SELECT s.output"
        " FROM saga_step_results AS s WHERE s.saga_id = %(saga_id)s AND s.step_idx = %(idx)s),"
        " '{}'::jsonb) || %(output)s),"
        f" status = CASE WHEN {_FINISHING} THEN 'completed' ELSE status END,"
        f" error = CASE WHEN {_FINISHING} THEN NULL ELSE error END,"
        f" finished_at = CASE WHEN {_FINISHING} THEN now() ELSE finished_at END"
    )
    + "), done AS (UPDATE saga_step_results SET status = 'completed', output = output || %(output)s,"
    " error = NULL, completed_at = now(), updated_at = now() FROM fence"
    f" WHERE {_STEP_ROW}"
    " RETURNING saga_step_results.id),"
    " released AS (DELETE FROM saga_resource_locks USING fence"
    " WHERE %(finish)s AND NOT (%(finish_unless_cancelled)s AND fence.cancel_requested)"
    f" AND {_LOCK_ROW} AND EXISTS (SELECT 1 FROM done)"
    " RETURNING 1),"
    " nxt AS (INSERT INTO saga_step_results"
    " (saga_id, step_idx, step_name, status, idempotency_key, attempts, started_at)"
    " SELECT fence.id, CAST(%(next_idx)s AS integer), CAST(%(next_name)s AS text), 'running',"
    " CAST(%(next_key)s AS text), 1, now() FROM fence"
    " WHERE %(start_next)s AND NOT (%(unless_cancelled)s AND fence.cancel_requested)"
    " AND EXISTS (SELECT 1 FROM done)"
    " ON CONFLICT ON CONSTRAINT saga_step_results_saga_step_key DO NOTHING"
    " RETURNING saga_step_results.*)"
    " SELECT fence.cancel_requested AS fence_cancel_requested,"
    " (SELECT count(*) FROM done) AS completed_rows, nxt.* FROM fence LEFT JOIN nxt ON true"
)
_STEP_FAILED = _step_update("status = 'failed', error = %(error)s, failed_at = now()")
_STEP_COMPENSATING = _step_update(
    "status = 'compensating', compensation_attempts = compensation_attempts + 1,"
    " compensation_started_at = coalesce(compensation_started_at, now())"
)
_STEP_COMPENSATED = _step_update("status = %(status)s, compensated_at = now()")
_STEP_COMPENSATION_FAILED = _step_update("status = 'compensation_failed', error = %(error)s")


def _is_idempotency_conflict(exc: LedgerError) -> bool:
    """The write hit the unique index on idempotency keys: another saga recorded that key."""
    cause = exc.__cause__
    diag = getattr(getattr(cause, "orig", cause), "diag", None)
    return getattr(diag, "constraint_name", None) == _IDEMPOTENCY_INDEX


def _lease_params(lease: Lease) -> dict[str, Any]:
    return {
        "lease_secs": lease.seconds,
        "saga_id": lease.saga_id,
        "lease_owner": lease.owner,
        "lease_epoch": lease.epoch,
    }


def _lease_lost(lease: Lease) -> LeaseLostError:
    return LeaseLostError(
        f"this runner lost its lease on saga {lease.saga_id} (expired or taken over);"
        " it stopped without writing"
    )
