"""Operator tools: what a human does when a saga needs one. The CLI is a thin shell over this.

- ``plan_saga``: what a saga of a kind would do, which names it would use and how each step is
  undone, computed from the catalog alone: it touches neither the provider nor the ledger.
- ``retry_compensation``: finish a rollback whose undo kept failing, through the runner itself
  (``Runner.advance``), so there is one rollback path, not two.
- ``resolve_saga``: an operator fixed a saga by hand; record who, when and why, make it terminal
  and free its resource, under the saga's lease so a live runner is never overruled.
- ``find_orphans`` / ``delete_orphans``: provider resources that carry a saga's name or tag but
  that no saga should own any more, and their removal, written to the ledger before and after.

What this module must never do: import Prefect, decide anything from a guess when the ledger can
say it, or touch the provider outside ``delete_orphans``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from sagas.digitalocean.models import Droplet, Snapshot
from sagas.errors import InputError, ProviderError, ProviderNotFoundError
from sagas.ledger.store import Ledger
from sagas.models import OperatorAction, RecordedStep, Reversibility, SagaRun, SagaStatus, StepStatus
from sagas.runner import Mode, Runner
from sagas.steps import Catalog, KeyScope

SAGA_TAG_PREFIX = "saga-"

# -- plan --------------------------------------------------------------------------------------


class StepPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    reversibility: Reversibility
    idempotency_key: str
    does: str
    compensation: str


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


# -- retry-compensation and resolve --------------------------------------------------------------


def _way_out(saga: SagaRun) -> str:
    """What to run instead, for a saga in a status the command refuses."""
    sid = saga.id
    return {
        SagaStatus.PENDING: f"`sagas resume {sid}` runs it, `sagas cancel {sid}` rolls it back",
        SagaStatus.RUNNING: f"`sagas resume {sid}` finishes it once its runner is gone; `sagas cancel {sid}`",
        SagaStatus.COMPENSATING: f"`sagas resume {sid}` finishes its rollback",
        SagaStatus.COMPENSATION_FAILED: f"`sagas retry-compensation {sid}`, or `sagas resolve {sid}`",
        SagaStatus.FAILED: f"`sagas resume {sid}` retries it forward; `sagas resolve {sid}` if fixed by hand",
        SagaStatus.COMPLETED: "nothing: it finished",
        SagaStatus.ROLLED_BACK: "nothing: it was undone (`sagas orphans` finds anything left behind)",
        SagaStatus.RESOLVED: "nothing: it was resolved by hand (`sagas orphans` finds anything left behind)",
    }[saga.status]


def retry_compensation(runner: Runner, saga_id: uuid.UUID, *, by: str) -> SagaRun:
    """Finish the rollback of a ``compensation_failed`` saga; refuse (InputError) any other status.

    The runner does the work (it continues a compensation_failed rollback); ROLLBACK mode makes
    sure this command can only ever undo, never run a step forward. SagaBusyError when held.
    """
    saga = runner.ledger.get_saga(saga_id)
    if saga.status is not SagaStatus.COMPENSATION_FAILED:
        raise InputError(
            f"saga {saga.id} is {saga.status.value}, not compensation_failed: retry-compensation only"
            f" finishes a rollback whose undo failed. Instead: {_way_out(saga)}"
        )
    result = runner.advance(saga.id, Mode.ROLLBACK)
    runner.ledger.record_operator_action(
        "retry_compensation",
        f"saga:{saga.id}",
        {"previous_error": saga.error, "outcome": result.status.value, "error": result.error},
        by,
    )
    return result


def resolve_saga(ledger: Ledger, saga_id: uuid.UUID, *, by: str, note: str, lease_seconds: float) -> SagaRun:
    """Record that an operator fixed the saga by hand: status ``resolved``, who, when, why.

    Refused (InputError, nothing written) for a finished saga or an empty note; SagaBusyError
    while a runner holds the saga: the lease is claimed exactly as a runner claims it.
    """
    note = note.strip()
    by = by.strip()
    if not note:
        raise InputError("--note is required: say what was done by hand, for whoever reads the ledger next")
    if len(note) > 4000:
        raise InputError("--note must be at most 4000 characters")
    if not by or len(by) > 200:
        raise InputError("--by must be 1-200 characters")
    saga = ledger.get_saga(saga_id)
    if saga.status.is_terminal:
        raise InputError(f"saga {saga.id} is already {saga.status.value}: {_way_out(saga)}")
    lease = ledger.claim(saga.id, lease_seconds)
    try:
        ledger.resolve_saga(lease, by=by, note=note)  # re-checks the status under the lease
    finally:
        ledger.release(lease)
    return ledger.get_saga(saga.id)


# -- orphans -----------------------------------------------------------------------------------


class OrphanProvider(Protocol):
    """The provider calls the orphan hunt needs; ``DigitalOceanClient`` has them all.

    Snapshots are listed per droplet, so a snapshot whose droplet is gone is not seen: an
    account-wide ``list_snapshots()`` (GET /v2/snapshots?resource_type=droplet) would close that.
    """

    def list_droplets(self, *, tag_name: str | None = None, name: str | None = None) -> list[Droplet]: ...

    def list_droplet_snapshots(self, droplet_id: int) -> list[Snapshot]: ...

    def get_snapshot(self, snapshot_id: str) -> Snapshot: ...

    def delete_snapshot(self, snapshot_id: str) -> None: ...

    def delete_droplet(self, droplet_id: int) -> None: ...


class Orphan(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["snapshot", "droplet"]
    id: str
    name: str
    droplet_id: int | None  # a snapshot's source droplet; the droplet itself for a droplet
    tags: tuple[str, ...] = ()
    saga_id: uuid.UUID | None  # the saga that recorded (or tagged) it, when there is one
    saga_status: SagaStatus | None
    step_name: str | None
    step_status: StepStatus | None
    reason: str

    @property
    def target(self) -> str:
        return f"{self.kind}:{self.id}"


# A saga in one of these will never act on its resources again: what it left behind is orphaned.
_LETS_GO = (SagaStatus.ROLLED_BACK, SagaStatus.RESOLVED)


def _owner_verdict(record: RecordedStep) -> str | None:
    """Why the resource this step recorded is an orphan, or None when its saga still owns it."""
    saga, step = record.step.saga_id, record.step
    if record.saga_status is SagaStatus.ROLLED_BACK:
        return f"saga {saga} rolled back, yet its {step.step_name} result is still here"
    if record.saga_status is SagaStatus.RESOLVED:
        return f"saga {saga} was resolved by hand; nothing will undo its {step.step_name} result"
    if record.saga_status is SagaStatus.COMPLETED and step.status is not StepStatus.COMPLETED:
        return f"saga {saga} completed but its step {step.step_name} is {step.status.value}"
    return None  # an unfinished saga, or a completed step of a completed saga: owned


def _snapshot_verdict(
    snapshot_id: str, name: str, records: Iterable[RecordedStep]
) -> tuple[RecordedStep | None, str | None]:
    """(the step that recorded the snapshot, why it is an orphan or None)."""
    records = list(records)
    for record in records:
        if str(record.step.output.get("snapshot_id") or "") == snapshot_id:
            return record, _owner_verdict(record)
    for record in records:
        if record.step.idempotency_key != name:
            continue
        recorded = record.step.output.get("snapshot_id")
        if recorded:
            return (
                record,
                f"a second snapshot under saga {record.step.saga_id}'s name; it recorded {recorded}",
            )
        return record, _owner_verdict(record)  # in flight or in doubt: the name is its claim
    return None, "no saga recorded it: made outside any saga, or by one whose ledger is gone"


def _droplet_verdict(
    droplet_id: int,
    name: str,
    tags: Iterable[str],
    sagas: Mapping[uuid.UUID, SagaRun],
    records: Iterable[RecordedStep],
) -> tuple[uuid.UUID | None, RecordedStep | None, str | None]:
    """(the tagging saga, the step that recorded the droplet, why it is an orphan or None)."""
    records = list(records)
    verdict: tuple[uuid.UUID | None, RecordedStep | None, str | None] = (None, None, None)
    for saga_id in _saga_tags(tags):
        saga = sagas.get(saga_id)
        if saga is None:
            verdict = (saga_id, None, f"tagged for saga {saga_id}, which the ledger does not know")
            continue
        mine = [
            r
            for r in records
            if r.step.saga_id == saga_id
            and (r.step.idempotency_key == name or r.step.output.get("droplet_id") == droplet_id)
        ]
        recorded = next((r for r in mine if r.step.status is StepStatus.COMPLETED), mine[0] if mine else None)
        if saga.status in _LETS_GO or saga.status is SagaStatus.COMPLETED:
            if recorded is None:
                reason = f"tagged for saga {saga_id} ({saga.status.value}), which recorded no step making it"
                verdict = (saga_id, None, reason)
                continue
            why = _owner_verdict(recorded)
            if why is not None:
                verdict = (saga_id, recorded, why)
                continue
        return saga_id, recorded, None  # some saga that tagged it still owns it
    return verdict


def _saga_tags(tags: Iterable[str]) -> list[uuid.UUID]:
    found = []
    for tag in tags:
        if tag.startswith(SAGA_TAG_PREFIX):
            try:
                found.append(uuid.UUID(tag[len(SAGA_TAG_PREFIX) :]))
            except ValueError:
                continue
    return found


def find_orphans(ledger: Ledger, provider: OrphanProvider, *, prefix: str) -> list[Orphan]:
    """Snapshots named ``<prefix>-snap-...`` and droplets tagged ``saga-<uuid>`` that no saga owns.

    Reads only. A snapshot deleted moments ago lingers in listings; it is confirmed with a GET by
    id (which is 404 at once) before it is reported.
    """
    droplets = provider.list_droplets()
    snapshots: list[tuple[int, Snapshot]] = []
    for droplet in droplets:
        snapshots.extend(
            (droplet.id, s)
            for s in provider.list_droplet_snapshots(droplet.id)
            if s.name.startswith(f"{prefix}-snap-")
        )
    orphans = _classify_snapshots(ledger, snapshots)
    orphans = [o for o in orphans if _snapshot_exists(provider, o.id)]
    tagged = [d for d in droplets if _saga_tags(d.tags)]
    return orphans + _classify_droplets(ledger, tagged)


def _snapshot_exists(provider: OrphanProvider, snapshot_id: str) -> bool:
    try:
        provider.get_snapshot(snapshot_id)
    except ProviderNotFoundError:
        return False
    return True


def _classify_snapshots(ledger: Ledger, snapshots: Sequence[tuple[int, Snapshot]]) -> list[Orphan]:
    if not snapshots:
        return []
    records = ledger.find_recorded_steps(
        keys={s.name for _, s in snapshots}, output_values={"snapshot_id": {s.id for _, s in snapshots}}
    )
    orphans = []
    for droplet_id, snapshot in snapshots:
        record, why = _snapshot_verdict(snapshot.id, snapshot.name, records)
        if why is None:
            continue
        orphans.append(
            Orphan(
                kind="snapshot",
                id=snapshot.id,
                name=snapshot.name,
                droplet_id=droplet_id,
                saga_id=record.step.saga_id if record else None,
                saga_status=record.saga_status if record else None,
                step_name=record.step.step_name if record else None,
                step_status=record.step.status if record else None,
                reason=why,
            )
        )
    return orphans


def _classify_droplets(ledger: Ledger, droplets: Sequence[Droplet]) -> list[Orphan]:
    if not droplets:
        return []
    saga_ids = {s for d in droplets for s in _saga_tags(d.tags)}
    sagas = ledger.get_sagas(saga_ids)
    records = ledger.find_recorded_steps(saga_ids=saga_ids)
    orphans = []
    for droplet in droplets:
        saga_id, record, why = _droplet_verdict(droplet.id, droplet.name, droplet.tags, sagas, records)
        if why is None:
            continue
        saga = sagas.get(saga_id) if saga_id else None
        orphans.append(
            Orphan(
                kind="droplet",
                id=str(droplet.id),
                name=droplet.name,
                droplet_id=droplet.id,
                tags=tuple(droplet.tags),
                saga_id=saga_id,
                saga_status=saga.status if saga else None,
                step_name=record.step.step_name if record else None,
                step_status=record.step.status if record else None,
                reason=why,
            )
        )
    return orphans


class DeletionOutcome(StrEnum):
    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    SKIPPED = "skipped"  # a saga owns it now (checked again just before deleting)
    FAILED = "failed"


class Deletion(BaseModel):
    model_config = ConfigDict(frozen=True)

    orphan: Orphan
    outcome: DeletionOutcome
    error: str | None = None
    action: OperatorAction | None = None  # the ledger's record; None for a skipped one


def delete_orphans(
    ledger: Ledger, provider: OrphanProvider, orphans: Iterable[Orphan], *, by: str
) -> list[Deletion]:
    """Delete each orphan, writing an ``operator_actions`` row before the call and its outcome after.

    Each orphan is judged again against the ledger just before it is deleted, so a saga that
    claimed it since the listing keeps it. One failure does not stop the others.
    """
    done = []
    for orphan in orphans:
        if not _still_orphaned(ledger, orphan):
            done.append(Deletion(orphan=orphan, outcome=DeletionOutcome.SKIPPED))
            continue
        detail = {
            "name": orphan.name,
            "reason": orphan.reason,
            "saga_id": str(orphan.saga_id) if orphan.saga_id else None,
            "droplet_id": orphan.droplet_id,
            "outcome": "deleting",
        }
        action = ledger.record_operator_action(f"delete_orphan_{orphan.kind}", orphan.target, detail, by)
        error = None
        try:
            if orphan.kind == "snapshot":
                provider.delete_snapshot(orphan.id)
            else:
                provider.delete_droplet(int(orphan.id))
            outcome = DeletionOutcome.DELETED
        except ProviderNotFoundError:
            outcome = DeletionOutcome.ALREADY_GONE
        except ProviderError as exc:
            outcome, error = DeletionOutcome.FAILED, str(exc)
        action = ledger.update_operator_action(action.id, {"outcome": outcome.value, "error": error})
        done.append(Deletion(orphan=orphan, outcome=outcome, error=error, action=action))
    return done


def _still_orphaned(ledger: Ledger, orphan: Orphan) -> bool:
    if orphan.kind == "snapshot":
        records = ledger.find_recorded_steps(keys={orphan.name}, output_values={"snapshot_id": {orphan.id}})
        return _snapshot_verdict(orphan.id, orphan.name, records)[1] is not None
    saga_ids = set(_saga_tags(orphan.tags))
    sagas, records = ledger.get_sagas(saga_ids), ledger.find_recorded_steps(saga_ids=saga_ids)
    return _droplet_verdict(int(orphan.id), orphan.name, orphan.tags, sagas, records)[2] is not None
