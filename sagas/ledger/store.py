"""The Postgres ledger: the single source of truth about every saga and every step.

Storage words stay in this package (rows, upserts, locks); callers speak domain words
(``record_step_started``). ``Ledger`` is one object made of three concerns, each in its module:

- ``queries``: reading, and the writes outside a runner's lease (a new saga, a cancel request);
- ``fenced``: the lease (claim, renew, release) and every write a runner makes, each one statement
  that proves the lease before it writes;
- ``audit``: an operator's resolution (fenced too) and the operator actions trail;
- ``admission``: the caps on destructive sagas running at once (a place taken under an advisory lock).
"""

from __future__ import annotations

from sqlalchemy import Engine

from sagas.ledger.admission import Admissions
from sagas.ledger.audit import OperatorAudit
from sagas.ledger.queries import SagaRecords


class Ledger(SagaRecords, OperatorAudit, Admissions):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
