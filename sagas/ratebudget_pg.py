"""The shared DigitalOcean rate budget's store: the ledger's Postgres (migration 0008).

``PostgresBudgetStore`` implements ``shared_budget.BudgetStore`` with one statement per call on a
pooled connection of the ledger's engine, in autocommit: ``rate_budget_lease(...)`` settles,
grants and queues under a row lock on the token (see the migration), ``rate_budget_tighten(...)``
records the provider's headers. It sits between the ledger and the client so that neither imports
the other; ``app.wiring`` hands it to the services.

It must never see the token (callers pass ``token_key``, a hash) and never retry: a failure is a
``LedgerError`` and the budget falls back to its local limits (``shared_budget``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from sagas.digitalocean.shared_budget import Grant, LeaseRequest
from sagas.ledger.database import autocommit_cursor, translate_db_errors

_LEASE = (
    "SELECT lease_id, granted, retry_in FROM rate_budget_lease("
    "%(token)s, %(holder)s, %(priority)s::smallint, %(want)s, %(minute_ceiling)s, %(hour_ceiling)s,"
    " %(minute_seconds)s, %(hour_seconds)s, %(hold_seconds)s, %(wait_seconds)s, %(yield_seconds)s,"
    " %(settle_ids)s::bigint[], %(settle_used)s::integer[], %(settle_age)s::double precision[],"
    " %(offline_minute)s, %(offline_hour)s)"
)
_TIGHTEN = (
    "SELECT rate_budget_tighten(%(token)s, %(remaining)s::integer, %(reset_in)s::double precision,"
    " %(pause)s::double precision)"
)


@dataclass(frozen=True)
class Reservation:
    """One live lease, as an operator (or a test) sees it."""

    holder: str
    priority: int
    slots: int
    use_by: datetime
    minute_until: datetime
    hour_until: datetime


@dataclass(frozen=True)
class Waiter:
    """A process registered as waiting for the token's slots: lower priorities give way to it."""

    holder: str
    priority: int
    until: datetime


class PostgresBudgetStore:
    """The rate budget's windows in the ledger's database; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Which database, for the budgets' registry: the URL as SQLAlchemy prints it (password
        # masked), hashed so not even the host name is kept.
        self._key = "postgres:" + hashlib.sha256(str(engine.url).encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        return self._key

    def lease(self, request: LeaseRequest) -> Grant:
        params = {
            "token": request.token_key,
            "holder": request.holder,
            "priority": int(request.priority),
            "want": request.want,
            "minute_ceiling": request.minute_ceiling,
            "hour_ceiling": request.hour_ceiling,
            "minute_seconds": request.minute_seconds,
            "hour_seconds": request.hour_seconds,
            "hold_seconds": request.hold_seconds,
            "wait_seconds": request.wait_seconds,
            "yield_seconds": request.yield_seconds,
            "settle_ids": [s.lease_id for s in request.settle],
            "settle_used": [s.used for s in request.settle],
            "settle_age": [s.age for s in request.settle],
            "offline_minute": request.offline_minute,
            "offline_hour": request.offline_hour,
        }
        with translate_db_errors("lease rate budget slots"), autocommit_cursor(self._engine) as cursor:
            cursor.execute(_LEASE, params)
            row = cursor.fetchone()
        if row is None:  # a function with OUT parameters always returns one row
            raise RuntimeError("rate_budget_lease returned no row")
        return Grant(row["lease_id"], int(row["granted"]), float(row["retry_in"]))

    def tighten(
        self, token_key: str, *, remaining: int | None, reset_in: float | None, pause: float | None
    ) -> None:
        params = {"token": token_key, "remaining": remaining, "reset_in": reset_in, "pause": pause}
        with (
            translate_db_errors("record the provider's rate limit"),
            autocommit_cursor(self._engine) as cursor,
        ):
            cursor.execute(_TIGHTEN, params)

    def reservations(self, token_key: str) -> list[Reservation]:
        """The token's leases that still count against either window, oldest first."""
        with translate_db_errors("read the rate budget"), autocommit_cursor(self._engine) as cursor:
            cursor.execute(
                "SELECT holder, priority, slots, use_by, minute_until, hour_until FROM rate_budget_leases"
                " WHERE token_key = %(token)s AND hour_until > clock_timestamp() ORDER BY id",
                {"token": token_key},
            )
            rows = cursor.fetchall()
        return [Reservation(**row) for row in rows]

    def waiters(self, token_key: str) -> list[Waiter]:
        """The processes registered as waiting for the token's slots now, most urgent first."""
        with translate_db_errors("read the rate budget"), autocommit_cursor(self._engine) as cursor:
            cursor.execute(
                "SELECT holder, priority, until FROM rate_budget_waiters"
                " WHERE token_key = %(token)s AND until > clock_timestamp() ORDER BY priority, until",
                {"token": token_key},
            )
            rows = cursor.fetchall()
        return [Waiter(**row) for row in rows]
