"""The ledger's side of the metrics: what the saga rows say now, and the counters processes send.

``MetricsStore`` reads, at scrape time, with a few aggregate queries whose cost does not grow with
the ledger (each one reads an index range of the sagas that are not finished for good, or a table
the size of the metric series, never all the finished sagas):

- ``saga_states()``: how many sagas are in each non-terminal status (pending, running, compensating,
  awaiting_approval, failed, compensation_failed), by kind, with the oldest one's age and, for those
  awaiting approval, the soonest deadline;
- ``compensation_failed_steps()``: the undos that gave up, of the sagas stuck compensation_failed;
- ``counts()``: the running totals in ``metric_counters``.

``add_counts(deltas)`` adds one process's counts to those totals (``sagas.telemetry.Flusher``'s
sink): one statement, rows in key order (so two processes flushing at once never deadlock), with
an asynchronous commit (a database crash may lose the last moment of counts, never a saga's row).

It must never write anything but ``metric_counters``, and never read the token or a saga's inputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from sagas.ledger.database import autocommit_cursor, translate_db_errors
from sagas.models import SagaStatus
from sagas.telemetry import SeriesKey

# The statuses whose sagas are counted at every scrape: not finished for good, so there are few of
# them whatever the size of the ledger. completed, rolled_back and resolved only grow; counting them
# would read the whole table, so they are counted as they happen (``sagas_settled``) instead.
OPEN_STATUSES: tuple[SagaStatus, ...] = tuple(s for s in SagaStatus if not s.is_terminal)

_SAGA_STATES = """
SELECT status, kind, count(*) AS sagas,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age,
       extract(epoch FROM min(approval_deadline_at) - now())::float8 AS next_deadline
  FROM saga_runs
 WHERE status = ANY(%(statuses)s)
 GROUP BY status, kind
"""
_COMPENSATION_FAILED_STEPS = """
SELECT r.kind, s.step_name, count(*) AS steps
  FROM saga_runs AS r
  JOIN saga_step_results AS s ON s.saga_id = r.id
 WHERE r.status = 'compensation_failed' AND s.status = 'compensation_failed'
 GROUP BY r.kind, s.step_name
"""
_COUNTS = "SELECT name, labels, value FROM metric_counters"
_ADD_COUNTS = """
INSERT INTO metric_counters AS m (name, labels, value)
SELECT d.name, d.labels, d.value
  FROM unnest(%(names)s::text[], %(labels)s::text[]::jsonb[], %(values)s::float8[]) AS d(name, labels, value)
 ORDER BY d.name, d.labels
    ON CONFLICT (name, labels) DO UPDATE SET value = m.value + excluded.value, updated_at = now()
"""


@dataclass(frozen=True)
class SagaState:
    """The sagas of one kind in one non-terminal status, as of the scrape."""

    status: SagaStatus
    kind: str
    sagas: int
    oldest_age_seconds: float  # since the oldest of them was created
    next_deadline_seconds: float | None  # awaiting approval: until the soonest deadline (< 0: past)


@dataclass(frozen=True)
class StuckUndos:
    kind: str
    step: str
    steps: int


@dataclass(frozen=True)
class Count:
    name: str
    labels: Mapping[str, str]
    value: float


class MetricsStore:
    """Safe to share between threads; every call is one or two statements on a pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def saga_states(self) -> list[SagaState]:
        with translate_db_errors("read the sagas' states"), autocommit_cursor(self._engine) as cursor:
            rows = cursor.execute(_SAGA_STATES, {"statuses": [s.value for s in OPEN_STATUSES]}).fetchall()
        return [
            SagaState(
                status=SagaStatus(row["status"]),
                kind=row["kind"],
                sagas=int(row["sagas"]),
                oldest_age_seconds=max(0.0, float(row["oldest_age"])),
                next_deadline_seconds=row["next_deadline"],
            )
            for row in rows
        ]

    def compensation_failed_steps(self) -> list[StuckUndos]:
        with translate_db_errors("read the failed undos"), autocommit_cursor(self._engine) as cursor:
            rows = cursor.execute(_COMPENSATION_FAILED_STEPS).fetchall()
        return [StuckUndos(kind=row["kind"], step=row["step_name"], steps=int(row["steps"])) for row in rows]

    def counts(self) -> list[Count]:
        with translate_db_errors("read the metric counters"), autocommit_cursor(self._engine) as cursor:
            rows = cursor.execute(_COUNTS).fetchall()
        return [Count(name=row["name"], labels=row["labels"], value=float(row["value"])) for row in rows]

    def add_counts(self, deltas: Mapping[SeriesKey, float]) -> None:
        """Add one process's counts (since its last call) to the running totals."""
        if not deltas:
            return
        names, labels, values = [], [], []
        for (name, pairs), value in deltas.items():
            names.append(name)
            labels.append(json.dumps(dict(pairs), sort_keys=True))
            values.append(value)
        with translate_db_errors("add metric counts"), self._engine.begin() as conn:
            # Counts are not worth a disk flush each: losing the last instant of them in a
            # database crash is fine, and the ledger's own commits stay durable.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            conn.exec_driver_sql(_ADD_COUNTS, {"names": names, "labels": labels, "values": values})
