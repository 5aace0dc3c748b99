"""The system in numbers, for Prometheus: a collector that reads everything from the ledger.

Flow runs are short-lived processes on many machines, so nothing here is kept in the scraping
process. At each scrape ``LedgerCollector`` reads:

- from the saga rows (``MetricsStore``, a few index-range aggregates, see there):
  ``sagas_sagas{kind,status}`` for every non-terminal status, ``sagas_oldest_saga_age_seconds``,
  ``sagas_awaiting_approval``, ``sagas_approval_deadline_seconds``,
  ``sagas_compensation_failed_steps``;
- from ``metric_counters``, the totals every process's counts add up to (``sagas.telemetry``):
  provider requests by status class, 429s, request latency, rate-budget waits, step durations,
  provider action waits, forward retries, compensation failures, lease losses, sagas settled.

Counters whose label values are known (kinds and steps of the catalog, methods, status classes)
are reported as 0 before anything is counted, so ``increase()`` sees their first count.

It must never write to the ledger, and never report a value it did not read from it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import product

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

from sagas.ledger.metrics import OPEN_STATUSES, Count, MetricsStore
from sagas.models import SagaStatus
from sagas.telemetry import INF, METRICS, SAGAS_SETTLED, Counter, Histogram, format_bound

SETTLED_STATUSES: tuple[SagaStatus, ...] = (
    SagaStatus.COMPLETED,
    SagaStatus.ROLLED_BACK,
    SagaStatus.RESOLVED,
    SagaStatus.FAILED,
    SagaStatus.COMPENSATION_FAILED,
)
METHODS = ("GET", "POST", "DELETE")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "none")


class LedgerCollector:
    """A ``prometheus_client`` collector; ``kinds`` and ``steps`` (the catalog's) name the series
    reported as 0 before anything happened."""

    def __init__(self, store: MetricsStore, *, kinds: Iterable[str] = (), steps: Iterable[str] = ()) -> None:
        self._store = store
        self._known: dict[str, tuple[str, ...]] = {
            "kind": tuple(kinds),
            "step": tuple(steps),
            "method": METHODS,
            "status_class": STATUS_CLASSES,
        }

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        yield from self._saga_states()
        yield self._stuck_undos()
        counts: dict[str, list[Count]] = defaultdict(list)
        for count in self._store.counts():
            counts[count.name].append(count)
        for metric in METRICS:
            if isinstance(metric, Histogram):
                yield _histogram(metric, counts[metric.bucket_series], counts[metric.sum_series])
            else:
                yield self._counter(metric, counts[metric.name])

    def _saga_states(self) -> Iterator[GaugeMetricFamily]:
        sagas = GaugeMetricFamily(
            "sagas_sagas",
            "Sagas now in each status that is not final (pending, running, compensating,"
            " awaiting_approval, failed, compensation_failed), by kind.",
            labels=["kind", "status"],
        )
        oldest = GaugeMetricFamily(
            "sagas_oldest_saga_age_seconds",
            "Seconds since the oldest saga now in this status was created, by kind and status.",
            labels=["kind", "status"],
        )
        awaiting = GaugeMetricFamily(
            "sagas_awaiting_approval", "Sagas waiting for a person's approval, by kind.", labels=["kind"]
        )
        deadline = GaugeMetricFamily(
            "sagas_approval_deadline_seconds",
            "Seconds until the soonest approval deadline of the sagas waiting, by kind (negative: passed,"
            " the recovery sweep rolls it back).",
            labels=["kind"],
        )
        found: dict[tuple[str, str], int] = {}
        waiting: dict[str, int] = {}
        for state in self._store.saga_states():
            found[(state.kind, state.status.value)] = state.sagas
            oldest.add_metric([state.kind, state.status.value], state.oldest_age_seconds)
            if state.status is SagaStatus.AWAITING_APPROVAL:
                waiting[state.kind] = state.sagas
                if state.next_deadline_seconds is not None:
                    deadline.add_metric([state.kind], state.next_deadline_seconds)
        for kind, status in product(self._known["kind"], (s.value for s in OPEN_STATUSES)):
            found.setdefault((kind, status), 0)
        for kind in self._known["kind"]:
            waiting.setdefault(kind, 0)
        for (kind, status), number in sorted(found.items()):
            sagas.add_metric([kind, status], number)
        for kind, number in sorted(waiting.items()):
            awaiting.add_metric([kind], number)
        yield from (sagas, oldest, awaiting, deadline)

    def _stuck_undos(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "sagas_compensation_failed_steps",
            "Undos that gave up, of the sagas now compensation_failed (an operator must act), by kind and step.",
            labels=["kind", "step"],
        )
        for stuck in self._store.compensation_failed_steps():
            family.add_metric([stuck.kind, stuck.step], stuck.steps)
        return family

    def _counter(self, metric: Counter, counts: Sequence[Count]) -> CounterMetricFamily:
        family = CounterMetricFamily(metric.name, metric.documentation, labels=list(metric.labelnames))
        totals: dict[tuple[str, ...], float] = {}
        for count in counts:
            values = _values(metric.labelnames, count.labels)
            if values is not None:
                totals[values] = totals.get(values, 0.0) + count.value
        known = {**self._known, "status": tuple(s.value for s in SETTLED_STATUSES)}
        if metric is not SAGAS_SETTLED:
            known.pop("status")
        if all(name in known for name in metric.labelnames):
            for values in product(*(known[name] for name in metric.labelnames)):
                totals.setdefault(tuple(values), 0.0)
        for values, total in sorted(totals.items()):
            family.add_metric(list(values), total)
        return family


def _values(names: Sequence[str], labels: Mapping[str, str]) -> tuple[str, ...] | None:
    """The label values in declared order, or None for a row written with other labels (older code)."""
    if set(labels) != set(names):
        return None
    return tuple(labels[name] for name in names)


def _histogram(metric: Histogram, buckets: Sequence[Count], sums: Sequence[Count]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(metric.name, metric.documentation, labels=list(metric.labelnames))
    per_bucket: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * (len(metric.buckets) + 1))
    for count in buckets:
        values = _values((*metric.labelnames, "le"), count.labels)
        if values is None:
            continue
        # A bound this code no longer has (the buckets changed) goes to the next bound up: its
        # observations are still at most that.
        per_bucket[values[:-1]][_bucket_index(metric.buckets, values[-1])] += count.value
    totals: dict[tuple[str, ...], float] = {}
    for count in sums:
        values = _values(metric.labelnames, count.labels)
        if values is not None:
            totals[values] = totals.get(values, 0.0) + count.value
    for values in sorted(per_bucket.keys() | totals.keys()):
        running = 0.0
        cumulative: list[tuple[str, float]] = []
        for bound, number in zip((*metric.buckets, math.inf), per_bucket[values], strict=True):
            running += number
            cumulative.append((INF if math.isinf(bound) else format_bound(bound), running))
        family.add_metric(list(values), cumulative, totals.get(values, 0.0))
    return family


def _bucket_index(bounds: Sequence[float], le: str) -> int:
    try:
        value = float(le)
    except ValueError:
        return len(bounds)
    for index, bound in enumerate(bounds):
        if value <= bound:
            return index
    return len(bounds)


def registry_for(
    store: MetricsStore, *, kinds: Iterable[str] = (), steps: Iterable[str] = ()
) -> CollectorRegistry:
    """A registry holding only the ledger's metrics (none of the scraping process's own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(store, kinds=kinds, steps=steps))
    return registry
