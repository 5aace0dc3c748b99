"""A long-lived worker: runs the sagas of one queue, many at once, in threads, with the core Runner.

Why it exists: a fleet of 10,000 droplets is 40,000 requests, eight hours of the account's rate
limit. Run as threads of one flow run, the night's work dies with that one process; started as a
process per saga, it cannot keep up (importing Prefect alone takes ~2 s, and the rate limit lets
more than one snapshot saga start a second). So a flow (``flows/fleet.py``) only records the
sagas, each on a queue (``saga_runs.queue``), and watches them; ``sagas worker --queue NAME``
processes, on any number of machines, run them. They share the queue (the ledger) and the rate
budget (the ledger's Postgres), nothing else.

Why it is safe: the worker asks the ledger what to run (``Ledger.list_queued``: pending sagas, and
sagas whose runner died, i.e. whose lease expired) and runs each with ``Runner.advance(id, FULL)``,
which claims the saga's lease before anything else. Two workers that pick the same saga: the second
gets SagaBusyError, writes nothing and moves on. A worker that dies (kill -9, a lost machine) leaves
leases that expire after ``SAGAS_LEASE_SECONDS``; the saga is then offered again and another worker
resumes it from the ledger (resume, never redo). A destructive saga that cannot take a place under
the caps yet (DestructiveCapError) is skipped and offered again a little later. The recovery sweep
leaves queued sagas to their workers.

Stopping (``stop()``, SIGTERM in ``sagas worker``): no new saga is started; the sagas in hand get
``grace`` seconds to end; any still running after that are left exactly as a crash would leave
them, and their leases free them for another worker. A worker never rolls a saga back because it
stops, never runs a saga of another queue, and never keeps a saga it is not running.
"""

from __future__ import annotations

import logging
import queue as queues
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sagas.errors import DestructiveCapError, LedgerError, SagaBusyError, SagaError
from sagas.ledger.store import Ledger
from sagas.models import SagaRun
from sagas.runner import Mode, Runner

_log = logging.getLogger("sagas.worker")
ERROR_REST_SECONDS = 30.0  # how long a saga whose runner stopped with an error rests before a retry


@dataclass
class WorkerReport:
    """What one worker did, from start to stop."""

    settled: Counter[str] = field(default_factory=Counter)  # status afterwards -> sagas
    busy: int = 0  # another runner held the saga: skipped
    waiting: int = 0  # a destructive saga found the caps full: offered again later
    errors: int = 0  # the runner stopped (the ledger, a lost lease): the saga is left for a resume
    left_running: int = 0  # still running when the grace ran out: their leases free them

    @property
    def ran(self) -> int:
        return sum(self.settled.values())


class QueueWorker:
    """Runs the sagas of ``queue``, ``concurrency`` at a time, until ``stop()``."""

    def __init__(
        self,
        ledger: Ledger,
        make_runner: Callable[[], Runner],
        *,
        queue: str,
        concurrency: int,
        poll_seconds: float = 1.0,
        on_settled: Callable[[SagaRun], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("a worker runs at least one saga at a time")
        self.ledger = ledger
        self.queue = queue
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._make_runner = make_runner
        self._on_settled = on_settled
        self._stop = threading.Event()
        self._wake = threading.Event()  # a saga ended, or stop(): look for work now
        self._lock = threading.Lock()
        self._in_hand: set[uuid.UUID] = set()
        self._tasks: queues.SimpleQueue[uuid.UUID | None] = queues.SimpleQueue()
        # Sagas whose runner stopped with an error rest a while before this worker tries them again,
        # so that one that cannot run (a definition that no longer matches) is not retried in a loop.
        self._resting: dict[uuid.UUID, float] = {}
        self.report = WorkerReport()

    def stop(self) -> None:
        """Start no new saga; ``run`` returns once the sagas in hand ended or its grace ran out."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def in_hand(self) -> int:
        with self._lock:
            return len(self._in_hand)

    def run(self, *, grace: float = 20.0) -> WorkerReport:
        """Work until ``stop()``; then give the sagas in hand ``grace`` seconds to end."""
        threads = [
            threading.Thread(target=self._work, name=f"worker-{self.queue}-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        while not self._stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                free = self.concurrency - len(self._in_hand)
                self._resting = {k: until for k, until in self._resting.items() if until > now}
                held = self._in_hand | set(self._resting)
            if free > 0:
                try:
                    found = self.ledger.list_queued(self.queue, limit=free, exclude=held)
                except LedgerError as exc:
                    _log.warning("could not read queue %s (trying again): %s", self.queue, exc)
                    found = []
                with self._lock:
                    self._in_hand.update(found)
                for saga_id in found:
                    self._tasks.put(saga_id)
            # Until a saga in hand ends (or stop()), or for a poll when the queue had nothing more.
            self._wake.wait(self.poll_seconds)
        return self._drain(grace, threads)

    def _drain(self, grace: float, threads: list[threading.Thread]) -> WorkerReport:
        # Ids handed over but not yet started are given back (a worker thread skips them too).
        while True:
            try:
                saga_id = self._tasks.get_nowait()
            except queues.Empty:
                break
            if saga_id is not None:
                with self._lock:
                    self._in_hand.discard(saga_id)
        deadline = time.monotonic() + grace
        while self.in_hand and time.monotonic() < deadline:
            self._wake.clear()
            self._wake.wait(min(0.2, max(deadline - time.monotonic(), 0.01)))
        for _ in threads:
            self._tasks.put(None)
        self.report.left_running = self.in_hand
        if self.report.left_running:
            _log.warning(
                "stopped with %d saga(s) still running: their leases free them for another worker",
                self.report.left_running,
            )
        return self.report

    def _work(self) -> None:
        while True:
            saga_id = self._tasks.get()
            if saga_id is None:
                return
            try:
                if not self._stop.is_set():
                    self._run_one(saga_id)
            finally:
                with self._lock:
                    self._in_hand.discard(saga_id)
                self._wake.set()

    def _rest(self, saga_id: uuid.UUID) -> None:
        with self._lock:
            self.report.errors += 1
            self._resting[saga_id] = time.monotonic() + ERROR_REST_SECONDS

    def _run_one(self, saga_id: uuid.UUID) -> None:
        runner = self._make_runner()
        try:
            saga = runner.advance(saga_id, Mode.FULL)
        except SagaBusyError:
            with self._lock:
                self.report.busy += 1  # another worker (or runner) has it
            return
        except DestructiveCapError:
            with self._lock:
                self.report.waiting += 1
            return
        except SagaError as exc:
            _log.error("saga %s stopped (left for a resume): %s", saga_id, exc)
            self._rest(saga_id)
            return
        except Exception:  # a bug must not take the worker down with the other sagas in hand
            _log.exception("saga %s: unexpected error (left for a resume)", saga_id)
            self._rest(saga_id)
            return
        finally:
            runner.services.close()
        with self._lock:
            self.report.settled[saga.status.value] += 1
        if self._on_settled is not None:
            try:
                self._on_settled(saga)
            except Exception:
                _log.exception("reporting saga %s failed", saga.id)


__all__ = ["QueueWorker", "WorkerReport"]
