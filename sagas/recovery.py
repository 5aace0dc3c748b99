"""Recovery: finish the sagas whose runner died (DESIGN rule 6).

A flow's hooks roll a saga back when its process is alive to run them; when it is not (kill -9,
a lost machine, a worker restarted mid-saga), the saga stays ``running`` or ``compensating`` with
a lease nobody renews. The sweep lists those whose lease has expired and calls the same
``Runner.advance`` a resume would: forward from the ledger, or on with the rollback.

Running the sweep twice, or while a runner is still alive, is safe: ``advance`` claims the saga's
lease first, so a saga someone holds is reported busy and left alone, and a saga that is already
finished has nothing left to do. A cancel requested while the saga's runner was dead is honoured
by the runner at its first safe point.

A queued saga (``saga_runs.queue``) is never taken: it is its queue's workers' (``sagas.worker``),
which take over a dead runner's sagas the same way. A destructive saga that cannot take a place
under the caps yet is reported waiting and left for a later sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sagas.errors import DestructiveCapError, SagaBusyError, SagaError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun
from sagas.runner import Mode, Runner

_log = logging.getLogger("sagas.recovery")


@dataclass
class SweepReport:
    finished: dict[str, str] = field(default_factory=dict)  # saga id -> status afterwards
    busy: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # saga id -> why it cannot start yet
    errors: dict[str, str] = field(default_factory=dict)


def sweep(
    ledger: Ledger,
    make_runner: Callable[[], Runner],
    *,
    pending_grace_seconds: float,
    limit: int = 100,
    on_done: Callable[[SagaRun], None] | None = None,
) -> SweepReport:
    """Advance every unfinished saga that no live runner holds; one saga's error stops no other."""
    report = SweepReport()
    for saga_id in ledger.list_recoverable(pending_grace_seconds=pending_grace_seconds, limit=limit):
        runner = make_runner()
        try:
            saga = runner.advance(saga_id, Mode.FULL)
        except SagaBusyError:
            report.busy.append(str(saga_id))  # taken by a live runner since we listed it
            continue
        except DestructiveCapError as exc:
            report.waiting[str(saga_id)] = exc.reason  # too many destructive sagas run: a later sweep
            continue
        except SagaError as exc:
            _log.error("recovery could not advance saga %s: %s", saga_id, exc)
            report.errors[str(saga_id)] = str(exc)
            continue
        finally:
            runner.services.close()
        report.finished[str(saga_id)] = saga.status.value
        if on_done is not None:
            on_done(saga)
    return report


__all__ = ["SweepReport", "sweep"]
