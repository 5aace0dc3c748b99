"""Which saga each flow run of this process drove: what a flow hook needs and Prefect cannot tell it.

Prefect calls a flow's hooks (on_failure, on_cancellation, on_crashed, on_completion) with the
flow run and its state, not with what the flow body learned. A hook must still know three things:

- whether this run's body *drove* a saga (claimed it): only then may the hook roll it back;
- whether the body was *turned away* (bad input, the saga or its droplet busy): then the run owns
  nothing and its hooks must leave every saga alone, even one whose id it shares;
- whether the body is still *publishing* the saga's artifacts on a thread of its own (they are
  published while Prefect proposes the final state): every hook waits for that first, so a run
  ends with its artifacts in place and in order;
- whether the body *lost its ledger* (the database or its lease went away mid-saga): then the saga
  did not fail, this process did, and no hook may roll it back: the recovery sweep resumes it;
- which artifact cards the run already has, so they are updated in place, not added again.

A run this process never saw (a worker's cancellation handler runs in the worker, not in the flow
run's process) is looked up in the ledger by its flow run id instead. One ``RunBook`` per process.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field


@dataclass
class RunBook:
    _drove: dict[str, uuid.UUID] = field(default_factory=dict)
    _turned_away: set[str] = field(default_factory=set)
    _publishing: dict[str, threading.Thread] = field(default_factory=dict)
    _lost_ledger: set[str] = field(default_factory=set)
    _artifacts: dict[tuple[str, str], uuid.UUID] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lost_ledger(self, run_id: str) -> None:
        with self._lock:
            self._lost_ledger.add(run_id)

    def has_lost_ledger(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._lost_ledger

    def artifact(self, run_id: str, key: str) -> uuid.UUID | None:
        with self._lock:
            return self._artifacts.get((run_id, key))

    def remember_artifact(self, run_id: str, key: str, artifact_id: uuid.UUID) -> None:
        with self._lock:
            self._artifacts[(run_id, key)] = artifact_id

    def drove(self, run_id: str, saga_id: uuid.UUID) -> None:
        with self._lock:
            self._drove[run_id] = saga_id

    def turned_away(self, run_id: str) -> None:
        with self._lock:
            self._turned_away.add(run_id)

    def publishing(self, run_id: str, thread: threading.Thread) -> None:
        with self._lock:
            self._publishing[run_id] = thread

    def finish_publishing(self, run_id: str, timeout: float = 60.0) -> None:
        """Wait for the run's artifacts to be published, if they are being published."""
        with self._lock:
            thread = self._publishing.pop(run_id, None)
        if thread is not None:
            thread.join(timeout=timeout)

    def take(self, run_id: str) -> tuple[bool, uuid.UUID | None]:
        """Forget the run and say what it did: (turned away, the saga it drove here or None)."""
        with self._lock:
            if run_id in self._turned_away:
                self._turned_away.discard(run_id)
                return True, None
            return False, self._drove.pop(run_id, None)


RUNBOOK = RunBook()
