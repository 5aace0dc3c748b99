"""What people decided and operators did, for audit: a saga resolved by hand (fenced, like a runner's
write), a decision on a saga awaiting approval, and the operator actions around deleting orphans,
written before and after the outside effect.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    delete,
    func,
    insert,
    select,
    update,
)

from sagas.errors import InputError, LedgerError, SagaNotFoundError
from sagas.ledger.database import translate_db_errors
from sagas.ledger.fenced import FencedWrites
from sagas.ledger.rows import json_literal, saga_from_row
from sagas.ledger.tables import operator_actions, saga_resource_locks, saga_runs
from sagas.models import (
    ApprovalDecision,
    Lease,
    OperatorAction,
    SagaRun,
    SagaStatus,
)


class OperatorAudit(FencedWrites):
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
        return saga_from_row(row)

    def record_operator_action(
        self, action: str, target: str, detail: Mapping[str, Any], performed_by: str
    ) -> OperatorAction:
        """Write down what an operator is about to do (or did), before and after the outside effect."""
        statement = (
            insert(operator_actions)
            .values(action=action, target=target, detail=json_literal(detail), performed_by=performed_by)
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
            .values(detail=operator_actions.c.detail.op("||")(json_literal(patch)))
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

    def decide_approval(
        self, saga_id: uuid.UUID, decision: ApprovalDecision, *, by: str, note: str
    ) -> SagaRun:
        """Record a person's decision on a saga awaiting approval, once and for good.

        InputError (nothing written) when the saga was already decided or is not awaiting approval;
        the audit row goes in the same transaction. No lease: like a cancel request, a decision
        is read by whichever runner takes the saga next.
        """
        statement = (
            update(saga_runs)
            .where(saga_runs.c.id == saga_id)
            .where(saga_runs.c.status == SagaStatus.AWAITING_APPROVAL.value)
            .where(saga_runs.c.approval_decision.is_(None))
            .values(
                approval_decision=decision.value,
                approval_by=by,
                approval_note=note,
                approval_decided_at=func.now(),
                updated_at=func.now(),
            )
            .returning(saga_runs)
        )
        with translate_db_errors("record an approval decision"), self._engine.begin() as conn:
            row = conn.execute(statement).one_or_none()
            if row is None:
                current = conn.execute(select(saga_runs).where(saga_runs.c.id == saga_id)).one_or_none()
                if current is None:
                    raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
                if current.approval_decision is not None:
                    raise InputError(
                        f"saga {saga_id} was already {current.approval_decision} by {current.approval_by}"
                        f" at {current.approval_decided_at:%Y-%m-%d %H:%M:%S}: a decision is given once"
                    )
                raise InputError(
                    f"saga {saga_id} is {current.status}, not awaiting approval: there is nothing to decide"
                )
            conn.execute(
                insert(operator_actions).values(
                    action=f"approval_{decision.value}",
                    target=f"saga:{saga_id}",
                    detail={"note": note},
                    performed_by=by,
                )
            )
        return saga_from_row(row)
