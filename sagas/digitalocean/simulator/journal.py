"""The request journal: every ``/v2`` request in the order it arrived, with its answer, for ``/_sim/requests``.

A test that wants to fault "the third request a step makes" first records a clean run here, then arms
a rule whose ``after`` lets the earlier matches pass. Entries are numbered (``seq``) from the
simulator's start and the numbers keep growing across resets, like resource ids, so a caller can ask
for what came after a point (``?since=``). The journal is bounded: the oldest entries fall off.

It must never record a request's headers or body: the token travels in one, and a test dumps this.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

MAX_ENTRIES = 20_000


@dataclass
class JournalEntry:
    seq: int
    method: str
    path: str
    query: str
    status: int | None = None  # None until the answer starts (or if it never does)
    fault: str | None = None  # the fault kind that decided the answer, or "latency" alone


class RequestJournal:
    """Thread-safe: entries are opened by the server's event loop and read by control requests."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._last = 0
        self._entries: deque[JournalEntry] = deque(maxlen=max_entries)

    def open(self, method: str, path: str, query: str) -> JournalEntry:
        with self._lock:
            self._last = next(self._seq)
            entry = JournalEntry(seq=self._last, method=method, path=path, query=query)
            self._entries.append(entry)
            return entry

    def answered(self, entry: JournalEntry, status: int) -> None:
        with self._lock:
            if entry.status is None:
                entry.status = status

    def faulted(self, entry: JournalEntry, kind: str) -> None:
        with self._lock:
            entry.fault = kind

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def last_seq(self) -> int:
        """The number of the latest request, kept across a reset: ``since(last_seq())`` is what comes next."""
        with self._lock:
            return self._last

    def since(self, seq: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The entries after request ``seq``, and the latest number (read together)."""
        with self._lock:
            return [asdict(e) for e in self._entries if e.seq > seq], self._last
