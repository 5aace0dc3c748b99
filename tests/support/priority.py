"""A compensation's request racing a queued fleet for a full rate budget (the in-memory one and the
shared one in Postgres both promise the compensation goes first)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sagas.digitalocean.ratelimit import Priority, request_priority


def order_served(request: Callable[[], None], fleet: int) -> list[str]:
    """Start ``fleet`` scheduled requests (``fleet-0`` ...), let them queue behind the full window,
    then one compensation (``rollback``); the names in the order ``request`` let them through."""
    order: list[str] = []
    lock = threading.Lock()

    def one(priority: Priority, name: str) -> None:
        with request_priority(priority):
            request()
        with lock:
            order.append(name)

    scheduled = [threading.Thread(target=one, args=(Priority.SCHEDULED, f"fleet-{i}")) for i in range(fleet)]
    for thread in scheduled:
        thread.start()
    time.sleep(0.1)  # the fleet's requests are queued behind the full window
    rollback = threading.Thread(target=one, args=(Priority.COMPENSATION, "rollback"))
    rollback.start()
    for thread in [*scheduled, rollback]:
        thread.join(timeout=10)
    return order
