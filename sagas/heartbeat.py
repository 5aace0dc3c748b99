"""The heartbeat: keeps a runner's lease alive while a step waits on a slow provider.

A lease that is never renewed hands a slow saga to a second runner (DESIGN rule 1), so a thread
renews it every third of its length. Renewals that keep failing (the ledger is gone) for longer
than the lease mean another runner may already hold the saga: the heartbeat then sets ``lost``,
which stops the runner at once: its provider client refuses to send (``Services.halt_on``) and
its next safe point raises LeaseLostError. It never writes anything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sagas.ledger.store import Ledger
from sagas.models import Lease

_log = logging.getLogger("sagas.runner")


class Heartbeat:
    def __init__(self, ledger: Ledger, lease: Lease, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._lease = lease
        self._clock = clock
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{lease.saga_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = max(self._lease.seconds / 3, 0.05)
        renewed = self._clock()
        while not self._stop.wait(interval):
            try:
                if not self._ledger.renew(self._lease):
                    _log.error("the lease on saga %s was taken over: stopping", self._lease.saga_id)
                    self.lost.set()
                    return
                renewed = self._clock()
            except Exception as exc:
                silent = self._clock() - renewed
                if silent >= self._lease.seconds:
                    _log.error(
                        "could not renew the lease on saga %s for %.0fs (longer than the lease): stopping"
                        " without calling the provider again; the saga is left for a resume (%s)",
                        self._lease.saga_id,
                        silent,
                        type(exc).__name__,
                    )
                    self.lost.set()
                    return
                _log.warning(
                    "could not renew the lease on saga %s (%s); trying again", self._lease.saga_id, exc
                )
