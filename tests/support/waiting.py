"""Waiting in real time for what another process (a Prefect worker, a flow run) does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, timeout: float = 120.0, every: float = 0.1) -> T:
    """Poll ``predicate`` every ``every`` seconds until it returns something truthy, and return that;
    fail naming ``what`` never happened if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return value
