"""The caps on destructive sagas running at once, kept by the database (the blast radius).

A destructive saga (offboard, rollback, update; ``saga_runs.destructive``, pinned from its kind)
holds a *place* from ``admitted_at`` while it is pending, running or compensating. Stopping to
await a person's approval gives the place up (``fenced._AWAIT_APPROVAL`` clears ``admitted_at``),
so an approved saga takes a place again before it goes on; an awaiting one with ``admitted_at`` set
was approved and admitted and is about to run, so it counts. Finished or stopped sagas (completed,
rolled back, failed, compensation_failed, resolved) hold nothing.

Every admission is one transaction that takes a transaction-scoped advisory lock first (one key for
the ledger: admissions are a few a second at most), in a statement of its own, then counts the
places held and writes. Under READ COMMITTED each statement sees what committed before it began, so
the count sees every admission that committed before this one took the lock: two processes racing
for the last place are served one after the other, and the second is refused or waits. No place is
ever taken any other way.

Only starting forward needs a place: a rollback, a compensation or finishing a failed saga forward
never waits for one (undo first; past a pivot there is no way back), though it counts while it runs.
This module must never hold the lock across anything but the count and the write.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, Engine, func, select, text, update

from sagas.errors import LeaseLostError, SagaNotFoundError
from sagas.ledger.database import translate_db_errors
from sagas.ledger.rows import saga_from_row
from sagas.ledger.tables import saga_runs
from sagas.models import DestructiveCaps, Lease, SagaRun, SagaStatus

ADMISSION_LOCK_KEY = 0x5A6A5CA9  # pg_advisory_xact_lock key held while a place is counted and taken
HOLDING = ("pending", "running", "compensating", "awaiting_approval")  # as the partial index says
_ADMITTABLE = (SagaStatus.PENDING, SagaStatus.AWAITING_APPROVAL)

_COUNT = text(
    "SELECT count(*) AS account, count(*) FILTER (WHERE deployment_id = :deployment) AS deployment"
    " FROM saga_runs WHERE destructive AND admitted_at IS NOT NULL"
    " AND status IN ('pending', 'running', 'compensating', 'awaiting_approval')"
)


def lock_places(conn: Connection) -> None:
    """Serialise admissions until the end of ``conn``'s transaction."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK_KEY})


def why_full(conn: Connection, caps: DestructiveCaps, deployment_id: str | None) -> str | None:
    """Why a destructive saga for ``deployment_id`` cannot take a place now; None when it can.

    Call it after ``lock_places`` in the same transaction, and write the admission before commit.
    """
    held = conn.execute(_COUNT, {"deployment": deployment_id}).one()
    if held.account >= caps.per_account:
        return (
            f"{held.account} destructive sagas (offboard, rollback, update) are running in this account,"
            f" the most SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT allows ({caps.per_account})"
        )
    if deployment_id is not None and held.deployment >= caps.per_deployment:
        return (
            f"{held.deployment} destructive sagas are running for customer deployment {deployment_id},"
            f" the most SAGAS_MAX_DESTRUCTIVE_PER_DEPLOYMENT allows ({caps.per_deployment})"
        )
    return None


class Admissions:
    _engine: Engine

    def admit(self, saga_id: uuid.UUID, caps: DestructiveCaps, *, lease: Lease | None = None) -> SagaRun:
        """Give a destructive saga that is about to start (or go on after its approval) a place
        under the caps, or record why it waits. Returns the saga as it is now: ``admitted_at`` set
        when it may go on; otherwise ``waiting_reason`` says why.

        With ``lease``, the write is fenced by it (a runner that lost its lease gets LeaseLostError
        and writes nothing); without one (a caller waiting before any runner started), a saga a live
        runner holds is left as it is, for that runner to admit.
        """
        with translate_db_errors("admit a destructive saga"), self._engine.begin() as conn:
            lock_places(conn)
            row = conn.execute(select(saga_runs).where(saga_runs.c.id == saga_id)).one_or_none()
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id}: check the id with `sagas list`")
            saga = saga_from_row(row)
            if not saga.destructive or saga.admitted_at is not None or saga.status not in _ADMITTABLE:
                return saga
            reason = why_full(conn, caps, saga.deployment_id)
            values = (
                {"admitted_at": func.now(), "waiting_reason": None}
                if reason is None
                else {
                    "waiting_reason": reason,
                    "waiting_since": func.coalesce(saga_runs.c.waiting_since, func.now()),
                }
            )
            statement = (
                update(saga_runs)
                .where(saga_runs.c.id == saga_id)
                .where(saga_runs.c.admitted_at.is_(None))
                .where(saga_runs.c.status.in_([st.value for st in _ADMITTABLE]))  # not moved on meanwhile
            )
            if lease is not None:
                statement = statement.where(
                    saga_runs.c.lease_owner == lease.owner,
                    saga_runs.c.lease_epoch == lease.epoch,
                    saga_runs.c.lease_expires_at > func.now(),
                )
            else:
                statement = statement.where(
                    saga_runs.c.lease_owner.is_(None) | (saga_runs.c.lease_expires_at <= func.now())
                )
            written = conn.execute(
                statement.values(**values, waiting_checked_at=func.now(), updated_at=func.now()).returning(
                    saga_runs
                )
            ).one_or_none()
        if written is None:
            if lease is not None:
                raise LeaseLostError(
                    f"this runner lost its lease on saga {saga_id} before it could start; it wrote nothing"
                )
            return saga
        return saga_from_row(written)
