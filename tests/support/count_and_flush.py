"""A process that counts and hands its counts to the ledger as every process does (``build_app``
wires the same flusher), for tests/test_metrics.py.

    python tests/support/count_and_flush.py DATABASE_URL N exit|flush-then-hang

Counts N lease losses, two GET requests (0.02 s and 0.2 s). ``exit``: ends normally, its counts
flushed at exit. ``flush-then-hang``: flushes, counts one more lease loss, prints ``flushed`` and
waits to be killed (that last count is never flushed).
"""

from __future__ import annotations

import sys
import time

from sagas.ledger.database import engine_for
from sagas.ledger.metrics import MetricsStore
from sagas.settings import load_settings
from sagas.telemetry import LEASE_LOSSES, PROVIDER_REQUEST_DURATION, PROVIDER_REQUESTS, flush_in_background


def main(url: str, count: int, mode: str) -> None:
    store = MetricsStore(engine_for(load_settings(database_url=url)))
    flusher = flush_in_background(store.add_counts, interval=3600)  # only the explicit and exit flushes
    for _ in range(count):
        LEASE_LOSSES.inc(kind="snapshot")
    for seconds in (0.02, 0.2):
        PROVIDER_REQUESTS.inc(method="GET", status_class="2xx")
        PROVIDER_REQUEST_DURATION.observe(seconds, method="GET")
    if mode == "flush-then-hang":
        flusher.flush()
        LEASE_LOSSES.inc(kind="snapshot")
        print("flushed", flush=True)
        time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
