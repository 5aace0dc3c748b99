"""Orphans: provider resources that carry a saga's name or tag but that no saga should own any more.

``find_orphans`` reads only; ``delete_orphans`` removes them, writing an operator action to the
ledger before and after each provider call. What this module must never do: delete anything a
saga still owns (each orphan is judged again just before it is deleted).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from sagas.digitalocean.models import Droplet, Snapshot
from sagas.errors import ProviderError, ProviderNotFoundError
from sagas.ledger.store import Ledger
from sagas.models import OperatorAction, RecordedStep, SagaRun, SagaStatus, StepStatus

SAGA_TAG_PREFIX = "saga-"


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
