"""The point of no return, as the runner sees it: which step is a pivot, whether a saga's pivot may
have written, and what a failed pivot's lookup says (the rule itself is ``sagas.in_doubt``).

A pivot has begun once its row says a write may have been sent (``write_started_at``) and no lookup
proved it did not happen; from then on nothing before it is compensated. A pivot that failed, timed
out or was refused is looked up at the provider when it may have written; the evidence goes into its
row, and ``settle_failed_pivot`` answers the verdict and the words for it. The runner acts on them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

from sagas.errors import LeaseLostError, LedgerError
from sagas.hold import SagaHold
from sagas.in_doubt import Found, Lookup, Verdict, proved_not_happened, settle_pivot
from sagas.invocation import describe
from sagas.ledger.store import Ledger
from sagas.models import Reversibility, SagaRun, StepResult, StepStatus
from sagas.steps import Catalog, StepContext, StepDefinition

_log = logging.getLogger("sagas.runner")

LOOKUP_TIMEOUT_SECONDS = 300.0  # how long asking the provider about a step in doubt may take


class Settled(NamedTuple):
    """What follows a failed pivot, and why (the saga's error when it rolls back or stops)."""

    verdict: Verdict
    why: str


def is_pivot(catalog: Catalog, saga: SagaRun, name: str) -> bool:
    return catalog.step(name).reversibility_for(saga.inputs) is Reversibility.PIVOT


def pivot_began(row: StepResult) -> bool:
    """A pivot's row says its write may have been sent, and no lookup proved it did not happen."""
    return row.write_started_at is not None and not proved_not_happened(row.output.get("in_doubt"))


def pivot_started(ledger: Ledger, catalog: Catalog, saga: SagaRun) -> bool:
    """Whether any pivot of the saga completed or may have written: no way back from here."""
    return any(
        is_pivot(catalog, saga, row.step_name) and (row.status is StepStatus.COMPLETED or pivot_began(row))
        for row in ledger.list_step_results(saga.id)
    )


def settle_failed_pivot(
    hold: SagaHold,
    saga: SagaRun,
    idx: int,
    step: StepDefinition,
    outputs: Mapping[str, Mapping[str, Any]],
    row: StepResult,
    ctx: StepContext,
    exc: Exception,
) -> Settled:
    """A pivot failed, timed out or was refused: look it up if it may have written, record what was
    found, and say what follows (a pivot nobody can tell about is recorded failed here)."""
    ledger, lease = hold.ledger, hold.lease
    why = describe(exc)
    may_have_written = ctx.wrote or row.write_started_at is not None
    lookup = _look_up(hold, saga, idx, step, row, outputs) if may_have_written else None
    if lookup is not None:
        ledger.record_step_progress(lease, idx, {"in_doubt": lookup.record(why)})
    verdict = settle_pivot(may_have_written=may_have_written, lookup=lookup)
    if verdict is Verdict.FORWARD:
        _log.warning(
            "pivot %s of saga %s happened despite %r (%s): finishing it forward",
            step.name,
            saga.id,
            why,
            lookup.evidence if lookup else "",
        )
        return Settled(verdict, why)
    if verdict is Verdict.ROLL_BACK:
        found = "nothing was sent" if lookup is None else f"looked up: {lookup.evidence}"
        return Settled(verdict, f"step {step.name} failed before its point of no return ({found}): {why}")
    evidence = lookup.evidence if lookup is not None else "no lookup"
    ledger.record_step_failed(lease, idx, why)
    return Settled(
        verdict,
        f"{why}; whether it happened could not be told ({evidence}): check the provider, then"
        f" `sagas resume {saga.id}` to finish it forward or `sagas resolve {saga.id}`",
    )


def _look_up(
    hold: SagaHold,
    saga: SagaRun,
    idx: int,
    step: StepDefinition,
    row: StepResult,
    outputs: Mapping[str, Mapping[str, Any]],
) -> Lookup:
    """Ask the provider whether the step's effect happened; a lookup that fails is UNKNOWN."""
    if step.lookup is None:
        return Lookup(Found.UNKNOWN, f"step {step.name} has no lookup")
    fresh = hold.ledger.list_step_results(saga.id)
    current = next((r for r in fresh if r.step_idx == idx), row)
    ctx = hold.context(saga, idx, step, current, outputs, cancellable=False, timeout=LOOKUP_TIMEOUT_SECONDS)
    try:
        return step.lookup(ctx)
    except (LeaseLostError, LedgerError):
        raise
    except Exception as exc:
        return Lookup(Found.UNKNOWN, f"the lookup failed: {describe(exc)}")
