"""This process's counts of what the ledger's rows do not say: provider requests and 429s, waits for
the rate budget, step timings, retries, lease losses.

The code that sees a thing happen counts it here, in memory (``PROVIDER_REQUESTS.inc(...)``: a
lock and a dict update, no I/O). A ``Flusher`` moves the counts to the ledger every few seconds
and when the process exits, as *additive deltas*: each flush hands over what was counted since the
previous one and the ledger adds it to its running totals (``sagas.ledger.metrics``). So any number
of processes on any number of machines add up, a process that ended keeps everything it flushed, and
one killed with SIGKILL loses at most its last ``interval`` of counts. ``sagas.metrics`` reads the
totals back for Prometheus.

Every metric is declared below, once: its name, help text, label names and (histograms) bucket
bounds; writer and reader agree through these declarations. A histogram is kept as a count per
bucket (one increment per observation, not cumulative) and a sum; the reader makes it cumulative.

It must never import the ledger or the provider client (both import it), never do I/O on the
caller's thread, and never take a label with unbounded values (ids, names, URLs): step names,
kinds, methods and status classes only.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_log = logging.getLogger("sagas.telemetry")

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # (series name, labels in declared order)
INF = "+Inf"


class Tally:
    """Counts since the last flush, by series. Thread-safe; every call holds one lock briefly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deltas: dict[SeriesKey, float] = {}

    def add(self, key: SeriesKey, value: float) -> None:
        with self._lock:
            self._deltas[key] = self._deltas.get(key, 0.0) + value

    def add_pair(self, first: SeriesKey, second: SeriesKey, value: float) -> None:
        """One increment of ``first``, ``value`` added to ``second`` (a histogram's bucket and sum)."""
        with self._lock:
            self._deltas[first] = self._deltas.get(first, 0.0) + 1.0
            self._deltas[second] = self._deltas.get(second, 0.0) + value

    def take(self) -> dict[SeriesKey, float]:
        """Everything counted so far; the tally starts again from nothing."""
        with self._lock:
            taken, self._deltas = self._deltas, {}
        return taken

    def give_back(self, deltas: Mapping[SeriesKey, float]) -> None:
        """Counts a flush could not deliver: they go out with the next one."""
        with self._lock:
            for key, value in deltas.items():
                self._deltas[key] = self._deltas.get(key, 0.0) + value


TALLY = Tally()  # the process's one tally: every metric below counts into it


def _labels(names: tuple[str, ...], values: Mapping[str, object]) -> Labels:
    if len(values) != len(names):
        raise ValueError(f"expected labels {names}, got {tuple(values)}")
    return tuple((name, str(values[name])) for name in names)


@dataclass(frozen=True)
class Counter:
    name: str  # as exposed, without ``_total``
    documentation: str
    labelnames: tuple[str, ...] = ()

    def inc(self, by: float = 1.0, **labels: object) -> None:
        TALLY.add((self.name, _labels(self.labelnames, labels)), by)


@dataclass(frozen=True)
class Histogram:
    name: str
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...]  # upper bounds, ascending; +Inf is implied

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"{self.name}: bucket bounds must ascend without repeats")

    @property
    def bucket_series(self) -> str:
        return f"{self.name}_bucket"

    @property
    def sum_series(self) -> str:
        return f"{self.name}_sum"

    def observe(self, value: float, **labels: object) -> None:
        values = _labels(self.labelnames, labels)
        index = bisect.bisect_left(self.buckets, value)
        le = format_bound(self.buckets[index]) if index < len(self.buckets) else INF
        TALLY.add_pair((self.bucket_series, (*values, ("le", le))), (self.sum_series, values), value)


def format_bound(bound: float) -> str:
    """A bucket bound as Prometheus prints it (``0.5``, ``1.0``, ``+Inf``)."""
    return repr(float(bound))


# --- every metric this code counts ------------------------------------------------------------------

STEP_DURATION = Histogram(
    "sagas_step_duration_seconds",
    "How long one try of a step's execute took, by step and outcome (completed or failed).",
    ("step", "outcome"),
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
PROVIDER_WAIT = Histogram(
    "sagas_provider_wait_seconds",
    "How long the provider's own actions took (their started_at to completed_at), by step.",
    ("step",),
    (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
PROVIDER_REQUEST_DURATION = Histogram(
    "sagas_provider_request_duration_seconds",
    "DigitalOcean request latency: sent to answered (or failed), by method.",
    ("method",),
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RATE_BUDGET_WAIT = Histogram(
    "sagas_rate_budget_wait_seconds",
    "How long a DigitalOcean request waited for the token's rate budget before it was sent, by priority.",
    ("priority",),
    (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
PROVIDER_REQUESTS = Counter(
    "sagas_provider_requests",
    "DigitalOcean requests sent, by method and answer (2xx, 4xx, 5xx; none: no answer came).",
    ("method", "status_class"),
)
PROVIDER_RATE_LIMITED = Counter(
    "sagas_provider_rate_limited",
    "DigitalOcean answers that were HTTP 429 (the request was not applied and is sent again).",
    ("method",),
)
FORWARD_RETRIES = Counter(
    "sagas_forward_retries",
    "Tries of a step after its saga's point of no return that failed and were tried again.",
    ("step",),
)
COMPENSATION_FAILURES = Counter(
    "sagas_compensation_failures",
    "Undos that gave up (their saga stopped compensation_failed), by step.",
    ("step",),
)
LEASE_LOSSES = Counter(
    "sagas_lease_losses",
    "Runners that lost their lease on a saga (taken over, or not renewed in time) and stopped.",
    ("kind",),
)
SAGAS_SETTLED = Counter(
    "sagas_settled",
    "Sagas brought to completed, rolled_back, resolved, failed or compensation_failed, by kind and status.",
    ("kind", "status"),
)

METRICS: tuple[Counter | Histogram, ...] = (
    STEP_DURATION,
    PROVIDER_WAIT,
    PROVIDER_REQUEST_DURATION,
    RATE_BUDGET_WAIT,
    PROVIDER_REQUESTS,
    PROVIDER_RATE_LIMITED,
    FORWARD_RETRIES,
    COMPENSATION_FAILURES,
    LEASE_LOSSES,
    SAGAS_SETTLED,
)


def status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


# --- moving the counts out ---------------------------------------------------------------------------

Sink = Callable[[Mapping[SeriesKey, float]], None]
FLUSH_SECONDS = 5.0


class Flusher:
    """Hands the tally to ``sink`` (the ledger) every ``interval`` seconds from a daemon thread, and
    once more when the process exits. A flush that fails gives its counts back for the next one."""

    def __init__(self, sink: Sink, *, interval: float = FLUSH_SECONDS, tally: Tally = TALLY) -> None:
        self.sink = sink
        self._interval = interval
        self._tally = tally
        self._stop = threading.Event()
        self._flushing = threading.Lock()  # one flush at a time: deltas are sent in the order taken
        self._thread: threading.Thread | None = None

    def flush(self) -> int:
        """Send what was counted; returns how many series went. Raises the sink's error (the
        counts are kept for the next flush)."""
        with self._flushing:
            deltas = self._tally.take()
            if not deltas:
                return 0
            try:
                self.sink(deltas)
            except BaseException:
                self._tally.give_back(deltas)
                raise
            return len(deltas)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="telemetry-flush", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the thread and flush what is left (a failure is logged: the process is ending)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._interval + 5)
        try:
            self.flush()
        except Exception as exc:
            _log.warning("could not hand this process's last metric counts to the ledger: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception as exc:
                _log.warning("could not hand metric counts to the ledger (kept for the next try): %s", exc)


_flusher: Flusher | None = None
_flusher_lock = threading.Lock()


def flush_in_background(sink: Sink, *, interval: float = FLUSH_SECONDS) -> Flusher:
    """The process's one flusher, started on first call; a later call points it at ``sink``."""
    global _flusher
    with _flusher_lock:
        if _flusher is None:
            _flusher = Flusher(sink, interval=interval)
            _flusher.start()
        else:
            _flusher.sink = sink
        return _flusher


def stop_flushing() -> None:
    """Flush what is left and stop the process's flusher now, rather than at exit (a test session
    about to drop its database)."""
    global _flusher
    with _flusher_lock:
        flusher, _flusher = _flusher, None
    if flusher is not None:
        atexit.unregister(flusher.close)
        flusher.close()
